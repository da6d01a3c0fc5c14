(function () {
  function cellText(row, i) {
    var c = row.cells[i]; if (!c) return "";
    return c.dataset.value || c.textContent.trim();
  }
  function sortable(table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, i) {
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellText(a, i), y = cellText(b, i);
          var nx = parseFloat(x), ny = parseFloat(y);
          var r = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
          return asc ? r : -r;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }
  function filterable(box) {
    var table = document.getElementById(box.dataset.table); if (!table) return;
    var text = box.querySelector(".mpnn-filter-text");
    var cols = box.querySelectorAll(".mpnn-filter-col");
    var count = box.querySelector(".mpnn-filter-count");
    function apply() {
      var words = (text.value || "").toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0, rows = table.tBodies[0].rows;
      Array.prototype.forEach.call(rows, function (row) {
        var all = row.textContent.toLowerCase();
        var ok = words.every(function (w) { return all.indexOf(w) >= 0; });
        Array.prototype.forEach.call(cols, function (s) {
          if (s.value && cellText(row, +s.dataset.col) !== s.value) ok = false;
        });
        row.style.display = ok ? "" : "none"; if (ok) shown++;
      });
      count.textContent = shown + " of " + rows.length + " claims";
    }
    text.addEventListener("input", apply);
    Array.prototype.forEach.call(cols, function (s) { s.addEventListener("change", apply); });
    apply();
  }
  function init() {
    document.querySelectorAll("table.mpnn-sortable").forEach(sortable);
    document.querySelectorAll(".mpnn-filter").forEach(filterable);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
