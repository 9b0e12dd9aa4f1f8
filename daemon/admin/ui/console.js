// dfs web console: refreshes the server-rendered live fragment, draws the charts and sends
// the few actions to the admin JSON API.  Plain JavaScript, no build step; served under a
// Content-Security-Policy without 'unsafe-inline', so all data arrives by data- attributes
// and fetch, and every value inserted here goes through textContent, never innerHTML (the
// fragments are HTML escaped by the server, daemon/admin/console.py).
"use strict";

(function () {
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";
  const SVG = "http://www.w3.org/2000/svg";
  const CHART_REFRESH_MS = 10000;

  function flash(text, isError) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = text;
    box.className = isError ? "show error" : "show";
  }

  function toLogin() {
    window.location.assign("/ui/login");
  }

  // -- the live fragment ------------------------------------------------------------------
  const live = document.getElementById("live");
  let refreshing = false;

  async function refresh() {
    if (!live || refreshing || document.hidden) return; // a background tab costs nothing
    refreshing = true;
    try {
      const resp = await fetch(live.dataset.fragment, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "text/html" },
      });
      if (resp.status === 401) return toLogin();
      if (!resp.ok) {
        flash("Refresh failed: HTTP " + resp.status, true);
        return;
      }
      const html = await resp.text();
      if (html !== live.dataset.last) {
        live.dataset.last = html;
        live.innerHTML = html; // server-escaped markup of our own origin
      }
      document.body.dataset.refreshed = String(Date.now());
    } catch (err) {
      flash("Refresh failed: " + err, true);
    } finally {
      refreshing = false;
    }
  }

  // -- API calls ---------------------------------------------------------------------------
  async function api(method, url, body) {
    const headers = { "X-CSRF-Token": csrf, Accept: "application/json" };
    const init = { method: method, credentials: "same-origin", headers: headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(url, init);
    if (resp.status === 401) {
      toLogin();
      throw new Error("logged out");
    }
    let doc = null;
    const text = await resp.text();
    if (text) {
      try {
        doc = JSON.parse(text);
      } catch (err) {
        doc = null;
      }
    }
    if (!resp.ok) {
      const message = doc && doc.error ? doc.error.message : "HTTP " + resp.status;
      throw new Error(message);
    }
    return doc;
  }

  document.addEventListener("click", async function (event) {
    const target = event.target;
    if (!(target instanceof Element)) return;
    const button = target.closest("button.action");
    if (!button) return;
    const confirmText = button.dataset.confirm;
    if (confirmText && !window.confirm(confirmText)) return;
    button.disabled = true;
    try {
      const body = button.dataset.body ? JSON.parse(button.dataset.body) : undefined;
      await api(button.dataset.method, button.dataset.url, body);
      flash(button.textContent + ": done", false);
      await refresh();
    } catch (err) {
      flash(button.textContent + " failed: " + err.message, true);
    } finally {
      button.disabled = false;
    }
  });

  function formBody(form) {
    const data = new FormData(form);
    const value = function (name) {
      const v = data.get(name);
      return typeof v === "string" ? v.trim() : "";
    };
    if (form.dataset.kind === "snapshot") {
      const body = { volume: value("volume") };
      if (value("name")) body.name = value("name");
      return body;
    }
    if (form.dataset.kind === "s3key") {
      const allow = {};
      if (value("bucket")) allow[value("bucket")] = value("perm") || "rw";
      return { description: value("description"), allow: allow };
    }
    if (form.dataset.kind === "grant") {
      return { perm: value("perm") || "rw" };
    }
    throw new Error("unknown form");
  }

  function formUrl(form) {
    if (form.dataset.kind !== "grant") return form.dataset.url;
    const data = new FormData(form);
    const part = function (name) {
      return encodeURIComponent(String(data.get(name) || "").trim());
    };
    return "/storage/s3/keys/" + part("access_key") + "/grants/" + part("bucket");
  }

  const DONE = { snapshot: "Snapshot created", s3key: "Key created", grant: "Access granted" };

  function showSecret(doc) {
    const box = document.getElementById("secret");
    if (!box) return;
    box.replaceChildren();
    const title = document.createElement("p");
    title.textContent = "New key. The secret is shown only now: copy it.";
    const dl = document.createElement("dl");
    [["Access key", doc.access_key, "new-access-key"], ["Secret key", doc.secret_key, "new-secret-key"]].forEach(
      function (row) {
        const dt = document.createElement("dt");
        dt.textContent = row[0];
        const dd = document.createElement("dd");
        const code = document.createElement("code");
        code.id = row[2];
        code.textContent = row[1];
        dd.appendChild(code);
        dl.append(dt, dd);
      }
    );
    box.append(title, dl);
    box.hidden = false;
  }

  document.addEventListener("submit", async function (event) {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.classList.contains("api-form")) return;
    event.preventDefault();
    const submit = form.querySelector('button[type="submit"]');
    if (submit) submit.disabled = true;
    try {
      const doc = await api(form.dataset.method, formUrl(form), formBody(form));
      if (form.dataset.kind === "s3key" && doc) showSecret(doc);
      flash(DONE[form.dataset.kind] || "Done", false);
      form.reset();
      await refresh();
    } catch (err) {
      flash("Failed: " + err.message, true);
    } finally {
      if (submit) submit.disabled = false;
    }
  });

  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async function () {
      try {
        await fetch("/ui/logout", {
          method: "POST",
          credentials: "same-origin",
          headers: { "X-CSRF-Token": csrf },
          redirect: "manual",
        });
      } finally {
        toLogin();
      }
    });
  }

  // -- charts ------------------------------------------------------------------------------
  function human(value, unit) {
    if (unit !== "bytes") return value.toFixed(value < 10 ? 1 : 0) + "/s";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (value >= 1024 && i < units.length - 1) {
      value /= 1024;
      i += 1;
    }
    return value.toFixed(i ? 1 : 0) + " " + units[i] + "/s";
  }

  function svgEl(name, attrs) {
    const el = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) {
      el.setAttribute(k, String(attrs[k]));
    });
    return el;
  }

  function draw(svg, points) {
    const series = svg.dataset.series.split(" ");
    svg.replaceChildren();
    const width = 300;
    const height = 100;
    if (points.length < 2) {
      const t = svgEl("text", { x: 6, y: 54, class: "chart-empty" });
      t.textContent = "collecting samples…";
      svg.appendChild(t);
      return;
    }
    const t0 = points[0].t;
    const span = Math.max(1, points[points.length - 1].t - t0);
    let max = 0;
    points.forEach(function (p) {
      series.forEach(function (s) {
        max = Math.max(max, p[s] || 0);
      });
    });
    const top = max > 0 ? max * 1.1 : 1;
    series.forEach(function (s, i) {
      const coords = points.map(function (p) {
        const x = ((p.t - t0) / span) * width;
        const y = height - ((p[s] || 0) / top) * (height - 12);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      svg.appendChild(svgEl("polyline", { points: coords.join(" "), class: "line line-" + i }));
    });
    const label = svgEl("text", { x: 4, y: 10, class: "chart-label" });
    label.textContent = "max " + human(max, svg.dataset.unit);
    svg.appendChild(label);
  }

  async function charts() {
    const svgs = document.querySelectorAll("svg.chart");
    if (!svgs.length) return;
    try {
      const resp = await fetch("/ui/api/history", { credentials: "same-origin", cache: "no-store" });
      if (resp.status === 401) return toLogin();
      if (!resp.ok) return;
      const doc = await resp.json();
      svgs.forEach(function (svg) {
        draw(svg, doc.points);
      });
    } catch (err) {
      flash("Charts failed: " + err, true);
    }
  }

  if (live) {
    const every = parseInt(live.dataset.refreshMs || "3000", 10);
    window.setInterval(refresh, Math.max(1000, every));
    document.body.dataset.refreshed = String(Date.now());
  }
  charts();
  window.setInterval(charts, CHART_REFRESH_MS);
})();
