// Conveyor dashboard: live updates by short polling, and "select all" on the DLQ page.
// A page region marked data-live="<json url>" is re-fetched when the JSON's fingerprint
// differs from the one the region was rendered with; nothing else is scripted.
(function () {
  "use strict";
  var interval = Number(document.body.dataset.pollMs) || 3000;
  var region = document.querySelector("[data-live]");
  var status = document.querySelector("[data-live-status]");
  var busy = false;

  function swap() {
    return fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("[data-live]");
        if (fresh) {
          region.innerHTML = fresh.innerHTML;
          region.dataset.fingerprint = fresh.dataset.fingerprint;
        }
      });
  }

  function poll() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(region.dataset.live, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.json(); })
      .then(function (data) {
        if (status) { status.classList.remove("stale"); }
        if (data.fingerprint !== region.dataset.fingerprint) { return swap(); }
      })
      .catch(function () { if (status) { status.classList.add("stale"); } })
      .then(function () { busy = false; });
  }

  if (region) {
    if (status) { status.hidden = false; }
    window.setInterval(poll, interval);
  }

  document.addEventListener("change", function (event) {
    var box = event.target;
    if (box.matches && box.matches("[data-select-all]")) {
      var form = box.closest("form");
      form.querySelectorAll('input[type="checkbox"][name="id"]').forEach(function (c) {
        c.checked = box.checked;
      });
    }
  });
})();
