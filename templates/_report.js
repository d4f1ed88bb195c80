// Per-example browser: sort the rows by ROUGE-L gain, largest regression or id. No libraries,
// no network; the page's Content-Security-Policy admits this script by its sha256 only.
(function () {
  "use strict";
  document.documentElement.setAttribute("data-js", "ready");
  var table = document.getElementById("examples");
  if (!table) return;
  var body = table.tBodies[0];
  var pick = document.getElementById("sort-arm");
  var buttons = Array.prototype.slice.call(document.querySelectorAll("button[data-sort]"));

  function gain(tr) {
    var v = tr.getAttribute("data-g" + (pick ? pick.value : "0"));
    return v === null || v === "" ? NaN : parseFloat(v);
  }
  function byGain(dir) {
    return function (a, b) {
      var x = gain(a), y = gain(b);
      if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y); // unknown gains last
      return dir * (x - y);
    };
  }
  var compare = {
    gain: byGain(-1),
    regression: byGain(1),
    id: function (a, b) {
      return a.getAttribute("data-id").localeCompare(b.getAttribute("data-id"), undefined,
                                                     {numeric: true});
    }
  };
  function sort(mode) {
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(compare[mode]);
    rows.forEach(function (tr) { body.appendChild(tr); });
    table.setAttribute("data-sorted", mode);
    buttons.forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-sort") === mode));
    });
  }
  buttons.forEach(function (b) {
    b.addEventListener("click", function () { sort(b.getAttribute("data-sort")); });
  });
  if (pick) {
    pick.addEventListener("change", function () {
      sort(table.getAttribute("data-sorted") || "gain");
    });
  }
  // A link can choose the first order: report.html#sort=regression
  var wanted = (/sort=(\w+)/.exec(location.hash) || [])[1];
  sort(compare.hasOwnProperty(wanted) ? wanted : "gain");
})();
