// Floe console: keeps the page's live section current. The controller
// sends the section anew (server-sent events) whenever what the admin API
// answers changed; the page itself is never reloaded. An update waits
// while a control in the section has the focus (a half-chosen move).
(function () {
  "use strict";
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!live) return;
  window.floeLoadedAt = window.floeLoadedAt || Date.now();
  var pending = null;
  function busy() {
    var a = document.activeElement;
    return a && live.contains(a) && (a.tagName === "SELECT" || a.tagName === "INPUT");
  }
  function apply() {
    if (pending === null || busy()) return;
    live.innerHTML = pending;
    pending = null;
    document.body.setAttribute("data-updated", String(Date.now()));
  }
  var source = new EventSource(
    "/console/events?page=" + encodeURIComponent(live.getAttribute("data-page")) +
      "&version=" + encodeURIComponent(live.getAttribute("data-version") || "")
  );
  source.addEventListener("live", function (e) {
    pending = e.data;
    apply();
  });
  source.addEventListener("logout", function () {
    source.close();
    window.location.assign("/console/login");
  });
  source.onopen = function () {
    if (status) status.textContent = "live";
  };
  source.onerror = function () {
    if (status) status.textContent = "reconnecting…";
  };
  document.addEventListener("focusout", function () {
    setTimeout(apply, 0);
  });
})();
