// The monitor's health panel: the server renders it (voicechat/monitoring/dashboard.py, the same numbers
// on every process); this refreshes it every few seconds while the page is visible.

const EVERY_MS = 10000;

class HealthPanel {
  constructor(root) {
    this.root = root;
    this.url = root.dataset.url;
  }

  start() {
    setInterval(() => { if (!document.hidden) this.refresh(); }, EVERY_MS);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) this.refresh(); });
  }

  async refresh() {
    try {
      const response = await fetch(this.url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      // Signed out or demoted: keep the last numbers rather than a login page in the panel.
      if (response.ok && !response.redirected) this.root.innerHTML = await response.text();
    } catch {
      // Offline for a moment: the next refresh tries again.
    }
  }
}

const root = document.getElementById("health");
if (root) new HealthPanel(root).start();
