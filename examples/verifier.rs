//! A minimal verifier: caches the JWKS for the max-age keyturn advertises and refetches on
//! an unknown kid (at most once per second), then verifies with the `jsonwebtoken` crate.
//!
//! ```sh
//! cargo run --example verifier -- "$TOKEN"
//! ```

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};
use std::time::{Duration, Instant};

struct JwksCache {
    url: String,
    set: JwkSet,
    fetched: Instant,
    max_age: Duration,
}

impl JwksCache {
    async fn fetch(url: &str) -> Result<Self, Box<dyn std::error::Error>> {
        let resp = reqwest::get(url).await?.error_for_status()?;
        let max_age = resp
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split(',')
                    .find_map(|d| d.trim().strip_prefix("max-age=")?.parse().ok())
            })
            .map_or(Duration::from_secs(60), Duration::from_secs);
        Ok(JwksCache {
            url: url.to_owned(),
            set: resp.json().await?,
            fetched: Instant::now(),
            max_age,
        })
    }

    async fn key(&mut self, kid: &str) -> Result<DecodingKey, Box<dyn std::error::Error>> {
        let stale = self.fetched.elapsed() > self.max_age;
        let unknown =
            self.set.find(kid).is_none() && self.fetched.elapsed() > Duration::from_secs(1);
        if stale || unknown {
            *self = Self::fetch(&self.url).await?;
        }
        let jwk = self.set.find(kid).ok_or("unknown kid")?;
        Ok(DecodingKey::from_jwk(jwk)?)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let token = std::env::args().nth(1).ok_or("usage: verifier TOKEN")?;
    let url = std::env::var("KEYTURN_JWKS")
        .unwrap_or_else(|_| "http://127.0.0.1:8390/.well-known/jwks.json".into());
    let mut cache = JwksCache::fetch(&url).await?;
    let header = decode_header(&token)?;
    let key = cache
        .key(header.kid.as_deref().ok_or("token has no kid")?)
        .await?;
    // Pin the algorithm from the header only after the key was found; jsonwebtoken checks
    // that the key type matches it.
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&["orders-api"]);
    let claims = decode::<serde_json::Value>(&token, &key, &validation)?.claims;
    println!("{}", serde_json::to_string_pretty(&claims)?);
    Ok(())
}
