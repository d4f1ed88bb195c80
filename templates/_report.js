// Per-example browser: sort the rows by ROUGE-L gain, largest regression, loss change or id,
// and show one eval set or all. No libraries, no network; the page's Content-Security-Policy
// admits this script by its sha256 only.
(function () {
  "use strict";
  document.documentElement.setAttribute("data-js", "ready");
  var table = document.getElementById("examples");
  if (!table) return;
  var body = table.tBodies[0];
  var pick = document.getElementById("sort-arm");
  var filter = document.getElementById("filter-set");
  var buttons = Array.prototype.slice.call(document.querySelectorAll("button[data-sort]"));

  function value(tr, prefix) {
    var v = tr.getAttribute(prefix + (pick ? pick.value : "0"));
    return v === null || v === "" ? NaN : parseFloat(v);
  }
  function by(prefix, dir) {
    return function (a, b) {
      var x = value(a, prefix), y = value(b, prefix);
      if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y); // unknown values last
      return dir * (x - y);
    };
  }
  var compare = {
    gain: by("data-g", -1),
    regression: by("data-g", 1),
    "loss-rise": by("data-l", -1),
    "loss-drop": by("data-l", 1),
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
  function show(set) {
    Array.prototype.forEach.call(body.rows, function (tr) {
      tr.hidden = set !== "*" && tr.getAttribute("data-set") !== set;
    });
    table.setAttribute("data-set", set);
    if (filter) filter.value = set;
  }
  buttons.forEach(function (b) {
    b.addEventListener("click", function () { sort(b.getAttribute("data-sort")); });
  });
  if (pick) {
    pick.addEventListener("change", function () {
      sort(table.getAttribute("data-sorted") || "gain");
    });
  }
  if (filter) {
    filter.addEventListener("change", function () { show(filter.value); });
  }
  // A link can choose the first order and set: report.html#sort=loss-rise&set=general
  var wanted = (/sort=([\w-]+)/.exec(location.hash) || [])[1];
  var first = buttons.length ? buttons[0].getAttribute("data-sort") : "id";
  sort(compare.hasOwnProperty(wanted) ? wanted : first);
  var set = (/set=([^&]*)/.exec(location.hash) || [])[1];
  if (filter && set !== undefined) {
    set = decodeURIComponent(set);
    var known = Array.prototype.some.call(filter.options, function (o) { return o.value === set; });
    show(known ? set : "*");
  }
})();
