// keyturn console: fetches the key set panels from this listener every few seconds and
// swaps them in, so the page stays current without a reload. Nothing else is fetched, and
// nothing runs but this file (Content-Security-Policy: default-src 'self').
"use strict";
(function () {
  const panels = document.getElementById("panels");
  const status = document.getElementById("status");
  const every = 1000 * (Number(panels.dataset.refresh) || 5);
  function show(text, live) {
    status.textContent = text;
    status.className = live ? "live" : "stale";
  }
  async function refresh() {
    try {
      const response = await fetch("/panels", { cache: "no-store" });
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      panels.innerHTML = await response.text();
      show("live", true);
    } catch (e) {
      show("cannot reach keyturn (" + e.message + "); retrying", false);
    }
    setTimeout(refresh, every);
  }
  show("live", true);
  setTimeout(refresh, every);
})();
