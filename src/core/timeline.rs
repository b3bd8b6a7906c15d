//! The key timeline as a picture: one SVG per key set, each key a band through pending,
//! active, retired and its end (removed or revoked), with the "now" line, the next
//! activation and removal, and the window in which verifiers that cache the JWKS for
//! `jwks_max_age` may still lack a newly published key.
//!
//! Plain data in, text out: the input is the key set view the admin API serves
//! (`GET /v1/keysets/{name}`), and the time is a parameter. `keyturn plan --svg` and the
//! console draw with the same functions. Every text is escaped; the markup uses
//! presentation attributes only (no `style`), so that it renders under the console's
//! `Content-Security-Policy: default-src 'self'`.

use serde::Deserialize;
use std::fmt::Write as _;

/// A key set as the admin API shows it (the fields the picture needs).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct KeySetPlan {
    /// The key set's name.
    pub name: String,
    /// Its algorithm.
    pub algorithm: String,
    /// The kid that signs now.
    #[serde(default)]
    pub active_kid: Option<String>,
    /// When the pending key becomes active.
    #[serde(default)]
    pub next_activation: Option<i64>,
    /// The next instant anything changes (an activation or a removal).
    #[serde(default)]
    pub next_event: Option<i64>,
    /// How long verifiers may cache the JWKS (seconds).
    pub jwks_max_age: i64,
    /// How long a key is published before it signs (seconds).
    pub publish_lead: i64,
    /// Its keys, in the order the key set keeps them.
    pub keys: Vec<KeyPlan>,
}

/// One key's times (Unix seconds) and state.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct KeyPlan {
    /// None while the key is being created.
    #[serde(default)]
    pub kid: Option<String>,
    /// "creating", "pending", "active", "retired", "removed" or "revoked".
    pub state: String,
    /// When its record was made.
    pub created_at: i64,
    /// When it entered the JWKS.
    #[serde(default)]
    pub published_at: Option<i64>,
    /// When it signs (or signed) first.
    #[serde(default)]
    pub activate_at: Option<i64>,
    /// When it stopped signing.
    #[serde(default)]
    pub retired_at: Option<i64>,
    /// When it leaves (or left) the JWKS.
    #[serde(default)]
    pub remove_at: Option<i64>,
    /// When it left the JWKS.
    #[serde(default)]
    pub removed_at: Option<i64>,
    /// When it was revoked.
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

impl KeySetPlan {
    /// The earliest removal after `now` of a key still in the JWKS.
    pub fn next_removal(&self, now: i64) -> Option<i64> {
        self.keys
            .iter()
            .filter(|k| k.is_published())
            .filter_map(|k| k.remove_at)
            .filter(|t| *t > now)
            .min()
    }

    /// The kids of the keys in the JWKS.
    pub fn published_kids(&self) -> impl Iterator<Item = &str> {
        self.keys
            .iter()
            .filter(|k| k.is_published())
            .filter_map(|k| k.kid.as_deref())
    }
}

impl KeyPlan {
    fn is_published(&self) -> bool {
        matches!(self.state.as_str(), "pending" | "active" | "retired")
    }

    /// When it left the JWKS, if it did.
    fn ended_at(&self) -> Option<i64> {
        match self.state.as_str() {
            "revoked" => self.revoked_at.or(self.removed_at),
            "removed" => self.removed_at.or(self.remove_at),
            _ => None,
        }
    }
}

/// Colours of the states, and of the marks.
const PENDING: &str = "#d99a1e";
const ACTIVE: &str = "#2e8b48";
const RETIRED: &str = "#6a7fa6";
const REVOKED: &str = "#c0392b";
const CACHE: &str = "#e8590c";
const NOW_LINE: &str = "#111111";
const GRID: &str = "#d8dde6";
const TEXT: &str = "#222222";
const MUTED: &str = "#5f6673";

/// Width of the picture, of the label column, and the plot's right margin.
const WIDTH: f64 = 1000.0;
const LABELS: f64 = 360.0;
const RIGHT: f64 = 20.0;
/// Height of a key's row, and of its band.
const ROW: f64 = 24.0;
const BAND: f64 = 14.0;

/// `text` with the five XML specials escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `t` as a UTC date, e.g. `2025-03-01 14:05:00 UTC`.
pub fn utc(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// A duration to the two largest units that matter to a reader: `3h 20m`, `2days 4h`, `45s`.
pub fn roughly(seconds: i64) -> String {
    let s = seconds.max(0);
    let unit = match s {
        86_400.. => 3600,
        3600.. => 60,
        _ => 1,
    };
    crate::config::human(s / unit * unit)
}

/// `t` relative to `now`: `in 3h 20m`, `5m ago`, `now`.
pub fn relative(t: i64, now: i64) -> String {
    match t.cmp(&now) {
        std::cmp::Ordering::Greater => format!("in {}", roughly(t - now)),
        std::cmp::Ordering::Less => format!("{} ago", roughly(now - t)),
        std::cmp::Ordering::Equal => "now".to_owned(),
    }
}

/// The time span drawn: from the oldest published key's publication (or a publish lead
/// before now) to the last planned removal or activation (or a publish lead after now),
/// with a margin.
fn span(plan: &KeySetPlan, now: i64) -> (i64, i64) {
    let lead = plan.publish_lead.max(plan.jwks_max_age).max(1);
    let published = plan.keys.iter().filter(|k| k.is_published());
    let start = published
        .clone()
        .map(|k| k.published_at.unwrap_or(k.created_at))
        .chain([now - lead])
        .min()
        .unwrap_or(now - lead);
    let end = published
        .flat_map(|k| [k.activate_at, k.remove_at])
        .flatten()
        .chain(plan.next_event)
        .chain([now + lead])
        .max()
        .unwrap_or(now + lead);
    let margin = ((end - start) / 25).max(1);
    (start - margin, end + margin)
}

/// A tick spacing that gives at most about eight ticks over `seconds`.
fn tick_step(seconds: i64) -> i64 {
    const STEPS: [i64; 22] = [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200,
        86_400, 172_800, 604_800, 2_592_000, 31_536_000,
    ];
    STEPS
        .into_iter()
        .find(|step| seconds / step <= 8)
        .unwrap_or(31_536_000 * ((seconds / 31_536_000 / 8) + 1))
}

fn tick_label(t: i64, step: i64) -> String {
    let format = match step {
        ..60 => "%H:%M:%S",
        60..86_400 => "%H:%M",
        _ => "%m-%d",
    };
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format(format).to_string())
        .unwrap_or_default()
}

/// Maps times to x within the plot.
struct Scale {
    start: i64,
    end: i64,
}

impl Scale {
    fn x(&self, t: i64) -> f64 {
        let t = t.clamp(self.start, self.end);
        let width = WIDTH - LABELS - RIGHT;
        LABELS + width * (t - self.start) as f64 / (self.end - self.start).max(1) as f64
    }
}

/// One band piece: `[from, to)` in a state's colour; planned (after now) pieces lighter.
fn piece(out: &mut String, scale: &Scale, from: i64, to: i64, y: f64, fill: &str, now: i64) {
    if to <= from {
        return;
    }
    let mut part = |a: i64, b: i64, opacity: f64| {
        let (x0, x1) = (scale.x(a), scale.x(b));
        if x1 - x0 > 0.0 {
            let _ = write!(
                out,
                r#"<rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{BAND}" fill="{fill}" fill-opacity="{opacity}"/>"#,
                x1 - x0
            );
        }
    };
    if from < now {
        part(from, to.min(now), 1.0);
    }
    if to > now {
        part(from.max(now), to, 0.45);
    }
}

/// A vertical mark at `t` down to `bottom`, with its label on the header line at `line`.
fn mark(scale: &Scale, t: i64, bottom: f64, line: f64, colour: &str, label: &str) -> String {
    let x = scale.x(t);
    let dash = if colour == NOW_LINE {
        ""
    } else {
        r#" stroke-dasharray="5 3""#
    };
    let anchor = if x > LABELS + (WIDTH - LABELS) / 2.0 {
        "end"
    } else {
        "start"
    };
    format!(
        r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="{colour}" stroke-width="1.5"{dash}/><text x="{x:.1}" y="{line:.1}" fill="{colour}" font-size="11" text-anchor="{anchor}">{}</text>"#,
        line + 3.0,
        escape(label),
    )
}

/// The key set's timeline at `now`, as an `<svg>` element (no XML prolog: inline in HTML,
/// or wrapped by [`document`]).
pub fn render(plan: &KeySetPlan, now: i64) -> String {
    let (start, end) = span(plan, now);
    let scale = Scale { start, end };
    // Keys in the JWKS, and those that left it inside the span drawn.
    let rows: Vec<&KeyPlan> = plan
        .keys
        .iter()
        .filter(|k| k.is_published() || k.ended_at().is_some_and(|t| t >= start))
        .collect();
    let next_removal = plan.next_removal(now);
    let header = 78.0;
    let top = header;
    let bottom = top + ROW * rows.len().max(1) as f64 + 4.0;
    let height = bottom + 46.0;
    let mut out = String::with_capacity(4096 + rows.len() * 600);
    let title = format!(
        "key set {} ({}): key timeline at {}",
        plan.name,
        plan.algorithm,
        utc(now)
    );
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="timeline" data-keyset="{name}" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="DejaVu Sans, Verdana, sans-serif" role="img" aria-label="{t}"><title>{t}</title><rect width="{WIDTH}" height="{height:.0}" fill="#ffffff"/>"##,
        name = escape(&plan.name),
        t = escape(&title),
    );
    let _ = write!(
        out,
        r#"<text x="10" y="20" font-size="15" font-weight="bold" fill="{TEXT}">key set {} <tspan font-weight="normal" fill="{MUTED}">{}</tspan></text>"#,
        escape(&plan.name),
        escape(&plan.algorithm),
    );
    // Grid and time axis.
    let step = tick_step(end - start);
    let first = start.div_euclid(step) * step + step;
    for t in (0..).map(|i| first + i * step).take_while(|t| *t < end) {
        let x = scale.x(t);
        let _ = write!(
            out,
            r#"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="{GRID}"/><text x="{x:.1}" y="{:.1}" font-size="10" fill="{MUTED}" text-anchor="middle">{}</text>"#,
            bottom + 14.0,
            tick_label(t, step),
        );
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="10" fill="{MUTED}" text-anchor="end">UTC</text>"#,
        LABELS - 8.0,
        bottom + 14.0
    );
    // The bands.
    for (i, key) in rows.iter().enumerate() {
        let y = top + ROW * i as f64 + (ROW - BAND) / 2.0;
        let kid = key.kid.as_deref().unwrap_or("(being created)");
        let active = key.kid.is_some() && key.kid == plan.active_kid;
        let _ = write!(
            out,
            r#"<g class="key" data-kid="{k}" data-state="{s}"><title>{k}: {s}</title><text x="10" y="{:.1}" font-size="11" font-family="DejaVu Sans Mono, monospace" fill="{TEXT}"{w}>{k}</text><text x="{:.1}" y="{:.1}" font-size="10" fill="{MUTED}" text-anchor="end">{s}</text>"#,
            y + BAND - 3.0,
            LABELS - 8.0,
            y + BAND - 3.0,
            k = escape(kid),
            s = escape(&key.state),
            w = if active { r#" font-weight="bold""# } else { "" },
        );
        let published = key.published_at.unwrap_or(key.created_at);
        let ended = key.ended_at();
        // A piece ends at its next state, at the key's end, or beyond the span drawn.
        let stop = |t: Option<i64>| match (t, ended) {
            (Some(t), Some(e)) => t.min(e),
            (t, e) => t.or(e).unwrap_or(end),
        };
        // The active key retires when the pending one activates.
        let retires = key.retired_at.or_else(|| {
            (key.state == "active")
                .then_some(plan.next_activation)
                .flatten()
        });
        let activates = stop(key.activate_at);
        piece(&mut out, &scale, published, activates, y, PENDING, now);
        if let Some(from) = key.activate_at {
            piece(&mut out, &scale, from, stop(retires), y, ACTIVE, now);
        }
        if let Some(from) = retires {
            piece(&mut out, &scale, from, stop(key.remove_at), y, RETIRED, now);
        }
        // The window in which a verifier that cached the JWKS just before publication may
        // not have the key yet.
        if key.published_at.is_some() && key.state != "revoked" {
            let (from, to) = (published, published.saturating_add(plan.jwks_max_age));
            let (x0, x1) = (scale.x(from), scale.x(to));
            if x1 > x0 {
                let _ = write!(
                    out,
                    r##"<rect class="cache-window" x="{x0:.1}" y="{:.1}" width="{:.1}" height="4" fill="{CACHE}"><title>until {}: verifiers caching the JWKS for {} may not have this key yet</title></rect>"##,
                    y + BAND,
                    x1 - x0,
                    escape(&utc(to)),
                    roughly(plan.jwks_max_age),
                );
            }
        }
        if let Some(t) = ended {
            let x = scale.x(t);
            let (colour, what) = if key.state == "revoked" {
                (REVOKED, "revoked")
            } else {
                (MUTED, "removed")
            };
            let _ = write!(
                out,
                r#"<path d="M{:.1} {:.1} l8 8 m0 -8 l-8 8" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}" font-size="10" fill="{colour}">{what}</text>"#,
                x - 4.0,
                y + 3.0,
                x + 7.0,
                y + BAND - 3.0,
            );
        }
        out.push_str("</g>");
    }
    if rows.is_empty() {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" fill="{MUTED}">no keys yet</text>"#,
            LABELS,
            top + 16.0
        );
    }
    // Marks: now, the next activation, the next removal.
    let _ = write!(
        out,
        r#"<g class="now">{}</g>"#,
        mark(
            &scale,
            now,
            bottom,
            34.0,
            NOW_LINE,
            &format!("now {}", utc(now))
        )
    );
    if let Some(t) = plan.next_activation.filter(|t| *t > now) {
        let kid = plan
            .keys
            .iter()
            .find(|k| k.state == "pending" && k.activate_at == Some(t))
            .and_then(|k| k.kid.as_deref())
            .map(|k| format!(" of {}", short(k)))
            .unwrap_or_default();
        let label = format!("next activation{kid}: {} ({})", utc(t), relative(t, now));
        let _ = write!(
            out,
            r#"<g class="next-activation">{}</g>"#,
            mark(&scale, t, bottom, 50.0, ACTIVE, &label)
        );
    }
    if let Some(t) = next_removal {
        let label = format!("next removal: {} ({})", utc(t), relative(t, now));
        let _ = write!(
            out,
            r#"<g class="next-removal">{}</g>"#,
            mark(&scale, t, bottom, 66.0, RETIRED, &label)
        );
    }
    legend(&mut out, bottom + 34.0, plan.jwks_max_age);
    out.push_str("</svg>");
    out
}

/// The first characters of a kid, enough to tell keys apart in a label.
fn short(kid: &str) -> String {
    match kid.char_indices().nth(10) {
        Some((i, _)) => format!("{}…", &kid[..i]),
        None => kid.to_owned(),
    }
}

fn legend(out: &mut String, y: f64, max_age: i64) {
    let mut x = 10.0;
    let cache = format!("JWKS caches ({}) may lack the key", roughly(max_age));
    let items: [(&str, &str, f64); 5] = [
        (PENDING, "pending", BAND),
        (ACTIVE, "active", BAND),
        (RETIRED, "retired", BAND),
        (CACHE, &cache, 4.0),
        (REVOKED, "revoked / ✕ removed", BAND),
    ];
    for (colour, label, h) in items {
        let _ = write!(
            out,
            r#"<rect x="{x:.1}" y="{:.1}" width="18" height="{h}" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="10" fill="{TEXT}">{}</text>"#,
            y - h,
            x + 23.0,
            y,
            escape(label),
        );
        x += 40.0 + 6.0 * label.chars().count() as f64;
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{y:.1}" font-size="10" fill="{MUTED}" text-anchor="end">lighter: planned</text>"#,
        WIDTH - RIGHT
    );
}

/// A standalone SVG document with the timelines of `plans` one under the other.
pub fn document(plans: &[KeySetPlan], now: i64) -> String {
    let pictures: Vec<String> = plans.iter().map(|p| render(p, now)).collect();
    let heights: Vec<f64> = pictures.iter().map(|p| height_of(p)).collect();
    let total: f64 = heights.iter().sum::<f64>() + 10.0 * plans.len().saturating_sub(1) as f64;
    let mut out = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{total:.0}" viewBox="0 0 {WIDTH} {total:.0}">
"#
    );
    let mut y = 0.0;
    for (picture, height) in pictures.iter().zip(&heights) {
        // A nested <svg> is placed by its x and y attributes.
        let placed = picture.replacen("<svg ", &format!(r#"<svg y="{y:.0}" "#), 1);
        out.push_str(&placed);
        out.push('\n');
        y += height + 10.0;
    }
    out.push_str("</svg>\n");
    out
}

/// The height [`render`] gave a picture.
fn height_of(picture: &str) -> f64 {
    picture
        .split_once(r#" height=""#)
        .and_then(|(_, rest)| rest.split_once('"'))
        .and_then(|(h, _)| h.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn key(kid: &str, state: &str, published: i64) -> KeyPlan {
        KeyPlan {
            kid: Some(kid.into()),
            state: state.into(),
            created_at: published,
            published_at: Some(published),
            activate_at: None,
            retired_at: None,
            remove_at: None,
            removed_at: None,
            revoked_at: None,
        }
    }

    /// A key set mid-rotation: one retired, one active, one pending; an older one removed
    /// and one revoked.
    fn plan() -> KeySetPlan {
        let h = 3600;
        KeySetPlan {
            name: "default".into(),
            algorithm: "ES256".into(),
            active_kid: Some("kid-active".into()),
            next_activation: Some(NOW + 2 * h),
            next_event: Some(NOW + h),
            jwks_max_age: 300,
            publish_lead: 360,
            keys: vec![
                KeyPlan {
                    removed_at: Some(NOW - 30 * h),
                    remove_at: Some(NOW - 30 * h),
                    ..key("kid-gone-long-ago", "removed", NOW - 200 * h)
                },
                KeyPlan {
                    activate_at: Some(NOW - 23 * h),
                    retired_at: Some(NOW - 22 * h),
                    revoked_at: Some(NOW - 21 * h),
                    ..key("kid-revoked", "revoked", NOW - 24 * h)
                },
                KeyPlan {
                    activate_at: Some(NOW - 22 * h),
                    retired_at: Some(NOW - 10 * h),
                    remove_at: Some(NOW + h),
                    ..key("kid-retired", "retired", NOW - 23 * h)
                },
                KeyPlan {
                    activate_at: Some(NOW - 10 * h),
                    remove_at: None,
                    ..key("kid-active", "active", NOW - 11 * h)
                },
                KeyPlan {
                    activate_at: Some(NOW + 2 * h),
                    ..key("kid-pending", "pending", NOW - 60)
                },
            ],
        }
    }

    #[test]
    fn the_picture_names_every_published_key_and_the_marks() {
        let svg = render(&plan(), NOW);
        for kid in ["kid-retired", "kid-active", "kid-pending", "kid-revoked"] {
            assert!(
                svg.contains(&format!(r#"data-kid="{kid}""#)),
                "{kid}: {svg}"
            );
        }
        // Removed before the span drawn began: not drawn.
        assert!(!svg.contains("kid-gone-long-ago"), "{svg}");
        assert!(svg.contains(&format!("now {}", utc(NOW))), "{svg}");
        assert!(
            svg.contains(&format!(
                "next activation of kid-pendin…: {} (in 2h)",
                utc(NOW + 7200)
            )),
            "{svg}"
        );
        assert!(
            svg.contains(&format!("next removal: {} (in 1h)", utc(NOW + 3600))),
            "{svg}"
        );
        // The active key's label is bold; the pending key has its cache window.
        assert!(svg.contains(r#"font-weight="bold">kid-active<"#), "{svg}");
        assert!(svg.contains("may not have this key yet"), "{svg}");
        // No style attribute or element: the console's CSP would block it.
        assert!(!svg.contains("style"), "{svg}");
    }

    #[test]
    fn a_band_is_solid_until_now_and_light_after() {
        let svg = render(&plan(), NOW);
        let pending = svg
            .split(r#"data-kid="kid-pending""#)
            .nth(1)
            .and_then(|s| s.split("</g>").next())
            .unwrap();
        // Published a minute ago: a solid piece, then the planned rest.
        assert!(
            pending.contains(&format!(r#"fill="{PENDING}" fill-opacity="1""#)),
            "{pending}"
        );
        assert!(
            pending.contains(&format!(r#"fill="{PENDING}" fill-opacity="0.45""#)),
            "{pending}"
        );
    }

    #[test]
    fn text_is_escaped() {
        let mut p = plan();
        p.name = "<script>&\"".into();
        p.keys[3].kid = Some("<b>".into());
        let svg = render(&p, NOW);
        assert!(!svg.contains("<script>") && !svg.contains("<b>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;&amp;&quot;"), "{svg}");
    }

    #[test]
    fn the_span_covers_every_published_key_and_the_next_events() {
        let p = plan();
        let (start, end) = span(&p, NOW);
        assert!(start < NOW - 23 * 3600, "{start}");
        assert!(end > NOW + 2 * 3600, "{end}");
        // A fresh key set: a publish lead either side of now.
        let fresh = KeySetPlan {
            keys: vec![],
            next_activation: None,
            next_event: None,
            ..p
        };
        let (start, end) = span(&fresh, NOW);
        assert!(start < NOW - 360 && start > NOW - 400, "{start}");
        assert!(end > NOW + 360 && end < NOW + 400, "{end}");
    }

    #[test]
    fn durations_read_roughly() {
        assert_eq!(roughly(3 * 3600 + 20 * 60 + 7), "3h 20m");
        assert_eq!(roughly(2 * 86_400 + 4 * 3600 + 59), "2days 4h");
        assert_eq!(roughly(45), "45s");
        assert_eq!(relative(NOW + 90, NOW), "in 1m 30s");
        assert_eq!(relative(NOW - 60, NOW), "1m ago");
    }

    #[test]
    fn ticks_are_few() {
        for span in [10, 600, 7200, 86_400 * 3, 86_400 * 400] {
            let step = tick_step(span);
            assert!(span / step <= 8 && span / step >= 1, "{span}: {step}");
        }
    }

    #[test]
    fn a_document_stacks_the_key_sets() {
        let mut other = plan();
        other.name = "other".into();
        let doc = document(&[plan(), other], NOW);
        assert!(doc.starts_with("<?xml"));
        let first = height_of(&render(&plan(), NOW));
        assert!(first > 100.0);
        assert!(doc.contains(r#"<svg y="0" "#), "{doc}");
        assert!(
            doc.contains(&format!(r#"<svg y="{:.0}" "#, first + 10.0)),
            "{doc}"
        );
        assert_eq!(doc.matches(r#"class="timeline""#).count(), 2);
    }
}
