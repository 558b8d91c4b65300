// taskscope: the one script. Pages work without it; it adds
//  - styled tooltips on chart columns (their <title> is the no-script fallback), and
//  - live updates: regions marked data-live-region are re-read from the server when
//    /api/events reports a state change (at most every 2 s), with a pause toggle.
(function () {
  "use strict";

  // Tooltips: move each column's <title> into data-tip and show it in one floating box.
  var tip = null;
  function prepareTips(root) {
    root.querySelectorAll("svg.plot rect.hit").forEach(function (rect) {
      var title = rect.querySelector("title");
      if (title) {
        rect.setAttribute("data-tip", title.textContent);
        title.remove();
      }
    });
  }
  function showTip(ev) {
    var target = ev.target;
    if (!(target instanceof Element) || !target.matches("rect.hit[data-tip]")) {
      if (tip) tip.hidden = true;
      return;
    }
    if (!tip) {
      tip = document.createElement("div");
      tip.className = "chart-tip";
      tip.setAttribute("role", "tooltip");
      document.body.appendChild(tip);
    }
    tip.textContent = target.getAttribute("data-tip");
    tip.hidden = false;
    var x = ev.clientX + 14, y = ev.clientY + 14;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth - 8) x = ev.clientX - w - 14;
    if (y + h > window.innerHeight - 8) y = ev.clientY - h - 14;
    tip.style.left = Math.max(4, x) + "px";
    tip.style.top = Math.max(4, y) + "px";
  }
  document.addEventListener("mousemove", showTip);
  document.addEventListener("mouseleave", function () { if (tip) tip.hidden = true; });
  prepareTips(document);

  // Live updates.
  var regions = document.querySelectorAll("[data-live-region]");
  var toggle = document.querySelector(".live-toggle");
  if (!regions.length || !toggle || !window.EventSource || !window.fetch) return;
  toggle.hidden = false;
  var paused = false, pending = false, timer = null, busy = false;
  function setPaused(p) {
    paused = p;
    toggle.setAttribute("aria-pressed", p ? "true" : "false");
    toggle.classList.toggle("paused", p);
    toggle.querySelector(".live-text").textContent = p ? "Paused" : "Live";
    if (!p && pending) schedule();
  }
  toggle.addEventListener("click", function () { setPaused(!paused); });
  function schedule() {
    pending = true;
    if (paused || timer) return;
    timer = setTimeout(refresh, 2000);
  }
  function refresh() {
    timer = null;
    if (paused || busy) return;
    pending = false;
    busy = true;
    fetch(window.location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        regions.forEach(function (region) {
          var fresh = doc.getElementById(region.id);
          if (fresh) {
            region.innerHTML = fresh.innerHTML;
            prepareTips(region);
          }
        });
      })
      .catch(function () { /* the next event retries */ })
      .then(function () { busy = false; if (pending) schedule(); });
  }
  // `--base-path`: the prefix the server is mounted under ("" at the root).
  var base = document.documentElement.getAttribute("data-base") || "";
  var source = new EventSource(base + "/api/events");
  source.addEventListener("transition", schedule);
  source.addEventListener("lagged", schedule);
  window.addEventListener("pagehide", function () { source.close(); });
})();
