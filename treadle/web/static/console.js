// treadle web console: selection and keyboard shortcuts (no build step).
(function () {
  "use strict";
  function rows() { return Array.prototype.slice.call(document.querySelectorAll("table.inbox tr.row, table.items tr.row")); }
  var cursor = -1;
  function move(by) {
    var all = rows(); if (!all.length) return;
    if (cursor >= 0 && all[cursor]) all[cursor].classList.remove("cursor");
    cursor = Math.max(0, Math.min(all.length - 1, cursor + by));
    all[cursor].classList.add("cursor"); all[cursor].scrollIntoView({block: "nearest"});
  }
  document.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && e.target.id === "bulk-reason") {
      e.preventDefault();
      var b = document.getElementById("reject-selected"); if (b) b.click();
    }
  });
  function typing(e) { var t = e.target.tagName; return t === "INPUT" || t === "TEXTAREA" || t === "SELECT"; }
  document.addEventListener("keydown", function (e) {
    if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
    var all = rows(), row = all[cursor];
    if (e.key === "j") move(1);
    else if (e.key === "k") move(-1);
    else if (e.key === "x" && row) { var box = row.querySelector("input.sel"); if (box) box.checked = !box.checked; }
    else if ((e.key === "Enter" || e.key === "o") && row) { var a = row.querySelector("a.open"); if (a) a.click(); }
    else if (e.key === "a") { var b = document.getElementById("approve"); if (b) { e.preventDefault(); b.click(); } }
    else if (e.key === "r") { var r = document.getElementById("reject-reason"); if (r) { e.preventDefault(); r.focus(); } }
    else if (e.key === "e") { var ed = document.getElementById("data-editor"); if (ed) { e.preventDefault(); ed.focus(); } }
  });
  document.addEventListener("change", function (e) {
    if (e.target.id === "select-all") {
      document.querySelectorAll("input.sel").forEach(function (b) { b.checked = e.target.checked; });
    }
  });
})();
