// The dashboard: reads the same reports as /v1/reports (through /dashboard/api with the
// session cookie) and draws them with Chart.js. No inline script: the CSP forbids it.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const charts = {};
  let generation = 0;

  function isoDate(d) {
    return d.toISOString().slice(0, 10);
  }

  function setPreset(days) {
    // "Today" in the picked zone, as the reports count days.
    const today = new Intl.DateTimeFormat("en-CA", { timeZone: $("timezone").value }).format(new Date());
    const last = new Date(today + "T00:00:00Z");
    const first = new Date(last.getTime() - (days - 1) * 86400000);
    $("from").value = isoDate(first);
    $("to").value = today;
  }

  function query(extra) {
    const q = new URLSearchParams({ timezone: $("timezone").value, from: $("from").value, to: $("to").value });
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return q.toString();
  }

  async function getJSON(path, extra) {
    const response = await fetch(path + (extra === null ? "" : "?" + query(extra)), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (response.status === 401) {
      window.location.assign("/dashboard");
      throw new Error("signed out");
    }
    const body = await response.json();
    if (!response.ok) throw new Error(body.detail || response.statusText);
    return body;
  }

  // Minor units -> major units, with the currency's own number of decimals (JPY 0, KWD 3).
  function digits(currency) {
    try {
      return new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions().maximumFractionDigits;
    } catch (e) {
      return 2;
    }
  }
  function major(amount, currency) {
    return amount / Math.pow(10, digits(currency));
  }
  function money(amount, currency) {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(major(amount, currency));
  }

  function draw(id, config) {
    if (charts[id]) charts[id].destroy();
    config.options = Object.assign({ animation: false, responsive: true, maintainAspectRatio: false }, config.options || {});
    charts[id] = new Chart($(id), config);
  }

  function cell(text, numeric) {
    const td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "num";
    return td;
  }

  // One currency at a time: amounts in different currencies share no scale. The picker
  // lists the report's currencies, most sales first, and keeps the choice while it exists.
  function currencies(report) {
    return [...report.totals].sort((a, b) => b.count - a.count || a.currency.localeCompare(b.currency))
      .map((t) => t.currency);
  }

  function revenue(report) {
    const select = $("currency");
    const listed = currencies(report);
    const chosen = listed.includes(select.value) ? select.value : listed[0] || "";
    select.replaceChildren(...listed.map((c) => new Option(c, c, false, c === chosen)));
    select.value = chosen;
    const periods = [...new Set(report.rows.filter((r) => r.currency === chosen).map((r) => r.period))].sort();
    const series = (figure) => periods.map((p) => {
      const row = report.rows.find((r) => r.period === p && r.currency === chosen);
      return row ? major(row[figure], chosen) : 0;
    });
    draw("revenue", {
      type: "bar",
      data: {
        labels: periods,
        datasets: [
          { label: "Gross " + chosen, data: series("gross") },
          { label: "Net " + chosen, data: series("net") },
        ],
      },
    });
    const body = $("totals").querySelector("tbody");
    body.replaceChildren();
    for (const t of report.totals) {
      const tr = document.createElement("tr");
      tr.dataset.currency = t.currency;
      tr.append(cell(t.currency), cell(String(t.count), true), cell(money(t.gross, t.currency), true),
        cell(money(t.refunds, t.currency), true), cell(money(t.disputes, t.currency), true),
        cell(money(t.net, t.currency), true));
      body.append(tr);
    }
  }

  const STAGES = ["delivered", "viewed", "clicked", "accepted", "paid"];
  function funnel(report) {
    draw("funnel", {
      type: "bar",
      data: { labels: STAGES, datasets: [{ label: "Offers", data: STAGES.map((s) => report.funnel[s]) }] },
      options: { plugins: { legend: { display: false } } },
    });
    const rate = report.rates.paid_per_delivered;
    $("funnel-rates").textContent =
      "Paid per delivered: " + (rate === null ? "n/a" : (rate * 100).toFixed(1) + " %");
  }

  function attribution(report) {
    // The currency picked for the revenue chart: revenues in different currencies share no scale.
    const currency = $("currency").value;
    const rows = report.in_chat.rows.filter((r) => r.currency === currency).slice(0, 10);
    const labels = rows.map((r) => (r.offer_title || r.offer_id) + " (" + r.currency + ")");
    const offPlatform = rows.map((r) => {
      const cell = report.off_platform.rows.find((o) => o.offer_id === r.offer_id && o.currency === r.currency);
      return cell && !cell.suppressed ? major(cell.revenue, r.currency) : null;
    });
    draw("attribution", {
      type: "bar",
      data: {
        labels,
        datasets: [
          { label: "In chat", data: rows.map((r) => major(r.revenue, r.currency)) },
          { label: "Off platform", data: offPlatform },
        ],
      },
      options: { indexAxis: "y" },
    });
    const hidden = report.off_platform.rows.filter((r) => r.suppressed).length;
    $("attribution-note").textContent = !report.off_platform.available
      ? "Off-platform attribution is not available yet."
      : hidden
        ? hidden + " off-platform figures are hidden: fewer than " + report.min_cardholders + " cardholders."
        : "";
  }

  function exceptions(body) {
    const tbody = $("exceptions").querySelector("tbody");
    tbody.replaceChildren();
    for (const e of body.data || []) {
      const tr = document.createElement("tr");
      tr.append(cell(e.opened_at), cell(e.type), cell(e.subject_key), cell(JSON.stringify(e.fields)));
      tbody.append(tr);
    }
    $("exceptions-note").textContent = (body.data || []).length ? "" : "No open exceptions.";
  }

  let lastSales = null;
  let lastAttribution = null;

  async function refresh() {
    document.body.dataset.state = "loading";
    $("status").textContent = "Loading…";
    try {
      const [sales, fun, attr] = await Promise.all([
        getJSON("/dashboard/api/reports/sales", { group_by: $("group_by").value }),
        getJSON("/dashboard/api/reports/funnel"),
        getJSON("/dashboard/api/reports/attribution", { limit: "100" }),
      ]);
      lastSales = sales;
      revenue(sales);
      funnel(fun);
      lastAttribution = attr;
      attribution(attr);
      try {
        exceptions(await getJSON("/dashboard/api/reconciliation/exceptions", null));
      } catch (e) {
        $("exceptions-note").textContent = "Exceptions are not available: " + e.message;
      }
      generation += 1;
      document.body.dataset.generation = String(generation);
      document.body.dataset.state = "ready";
      $("status").textContent = sales.from + " to " + sales.to + ", " + sales.timezone;
    } catch (e) {
      document.body.dataset.state = "error";
      $("status").textContent = "Could not load the reports: " + e.message;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    setPreset(30);
    $("apply").addEventListener("click", refresh);
    for (const id of ["timezone", "group_by", "from", "to"]) $(id).addEventListener("change", refresh);
    $("currency").addEventListener("change", () => {
      if (!lastSales) return;
      revenue(lastSales);
      if (lastAttribution) attribution(lastAttribution);
      generation += 1;
      document.body.dataset.generation = String(generation);
    });
    for (const button of document.querySelectorAll("button[data-days]")) {
      button.addEventListener("click", () => {
        setPreset(Number(button.dataset.days));
        refresh();
      });
    }
    refresh();
  });
})();
