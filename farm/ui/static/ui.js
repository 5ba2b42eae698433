// farm ui: polls /api/jobs and /api/jobs/<id> and updates the page in place.
// Text from run folders only ever goes through textContent / attributes, never HTML.
"use strict";

const POLL_MS = Number(document.body.dataset.pollMs) || 2000;
const byId = (id) => document.getElementById(id);
const encodeId = (id) => id.split("/").map(encodeURIComponent).join("/");
const jobFromPath = () => location.pathname.startsWith("/job/")
  ? location.pathname.slice(5).split("/").map(decodeURIComponent).join("/") : null;
let selected = jobFromPath();

function node(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined && text !== null) element.textContent = String(text);
  return element;
}

function setText(id, value) {
  const text = value === null || value === undefined || value === "" ? "–" : String(value);
  if (byId(id).textContent !== text) byId(id).textContent = text;
}

function setSrc(element, url) {
  if (element.getAttribute("src") !== url) element.setAttribute("src", url);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return null;
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(r).padStart(2, "0")}s`;
  return `${r}s`;
}

function progressText(job) {
  return `${job.done} / ${job.total === null ? "?" : job.total}`;
}

// Reuse child elements by key so images that did not change are not reloaded.
function syncFigures(container, items, make) {
  const old = new Map([...container.children].map((child) => [child.dataset.key, child]));
  const wanted = items.map((item) => {
    const element = old.get(String(item.key)) || make(item);
    element.dataset.key = String(item.key);
    setSrc(element.querySelector("img"), item.url);
    element.querySelector("figcaption").textContent = item.caption;
    return element;
  });
  if (wanted.length !== container.children.length ||
      wanted.some((element, i) => container.children[i] !== element)) {
    container.replaceChildren(...wanted);
  }
  container.hidden = wanted.length === 0;
}

function figure(alt) {
  return () => {
    const box = node("figure");
    const img = node("img");
    img.alt = alt;
    box.append(img, node("figcaption"));
    return box;
  };
}

function renderList(data) {
  setText("root", data.root);
  const list = byId("jobs");
  const signature = JSON.stringify([selected, data.jobs]);
  if (list.dataset.signature === signature) return;
  list.dataset.signature = signature;
  const items = data.jobs.map((job) => {
    const item = node("li", job.id === selected ? "selected" : "");
    const link = node("a");
    link.href = "/job/" + encodeId(job.id);
    link.dataset.job = job.id;
    if (job.latest) {
      const thumb = node("img", "thumb");
      thumb.alt = "";
      thumb.src = job.latest.url;
      link.append(thumb);
    } else {
      link.append(node("span", "thumb empty"));
    }
    const text = node("span", "text");
    text.append(node("span", "name", job.name), node("span", "id", job.id));
    const meta = node("span", "meta");
    meta.append(node("span", "badge " + job.state, job.state),
                node("span", "count", progressText(job)));
    text.append(meta);
    link.append(text);
    item.append(link);
    return item;
  });
  list.replaceChildren(...items);
  byId("no-jobs").hidden = items.length > 0;
}

function renderJob(job) {
  byId("missing").hidden = true;
  byId("job").hidden = false;
  document.title = `${job.name} · ${job.state} · Disco Farm`;
  setText("job-name", job.name);
  setText("job-id", job.id);
  const badge = byId("job-state");
  badge.textContent = job.state;
  badge.className = "badge " + job.state;
  const dashboard = byId("dashboard");
  dashboard.hidden = !job.dashboard_url;
  if (job.dashboard_url) dashboard.href = job.dashboard_url;

  setText("done", job.done);
  setText("total", job.total === null ? "?" : job.total);
  setText("failed", job.failed);
  setText("eta", job.state === "running" ? duration(job.eta_seconds) : null);
  const share = job.total ? Math.min(1, job.done / job.total) : 0;
  byId("bar-fill").style.width = (share * 100).toFixed(1) + "%";
  byId("bar-fill").className = job.state;
  setText("current", job.current.length
    ? "· rendering " + job.current.map((c) =>
        `#${c.index}` + (c.steps ? ` step ${c.step ?? 0}/${c.steps}` : "")).join(", ")
    : "");

  byId("error").hidden = !job.error;
  byId("error").textContent = job.error || "";
  const errors = job.errors.map((e) => node("li", null,
    (e.index === null ? "" : `#${e.index} `) + (e.actor ? `(${e.actor}) ` : "") + (e.message || "")));
  byId("errors").replaceChildren(...errors);
  byId("errors").hidden = errors.length === 0;
  byId("problems").replaceChildren(...job.problems.map((p) => node("li", null, p)));
  byId("problems").hidden = job.problems.length === 0;

  byId("latest-box").hidden = !job.latest;
  if (job.latest) {
    setSrc(byId("latest"), job.latest.url);
    byId("latest-caption").textContent =
      `latest finished: ${job.kind === "image" ? "image" : "frame"} ${job.latest.index}`;
  }
  syncFigures(byId("previews"), job.previews.map((p) => ({
    key: p.index, url: p.url,
    caption: `rendering #${p.index}` + (p.steps ? `, step ${p.step ?? 0}/${p.steps}` : ""),
  })), figure("preview of the frame being rendered"));

  const video = job.video;
  byId("video-box").hidden = !video;
  if (video) {
    const isGif = video.kind === "image";
    byId("video").hidden = isGif;
    byId("video-gif").hidden = !isGif;
    setSrc(isGif ? byId("video-gif") : byId("video"), video.url);
    byId("video-caption").textContent = video.final ? video.file : "frames so far (preview.mp4)";
  }
  byId("sheet-box").hidden = !job.contact_sheet;
  if (job.contact_sheet) setSrc(byId("sheet"), job.contact_sheet.url);
  syncFigures(byId("gallery"), job.gallery.map((g) => ({
    key: g.index, url: g.url, caption: `image ${g.index}`,
  })), figure("finished image"));

  const rows = job.settings.map(([label, value]) => {
    const row = node("tr");
    row.append(node("th", null, label), node("td", null, value));
    return row;
  });
  const body = byId("settings").tBodies[0];
  const signature = JSON.stringify(job.settings);
  if (body.dataset.signature !== signature) {
    body.replaceChildren(...rows);
    body.dataset.signature = signature;
  }
  byId("scene-box").hidden = !job.scene_yaml;
  if (byId("scene-yaml").textContent !== (job.scene_yaml || "")) {
    byId("scene-yaml").textContent = job.scene_yaml || "";
  }
  setText("started", job.started_at);
  setText("updated", job.updated_at);
  setText("finished", job.finished_at);
}

async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (response.status === 404) return null;
  if (!response.ok) throw new Error(`${url} answered ${response.status}`);
  return response.json();
}

async function tick() {
  try {
    const list = await getJson("/api/jobs");
    if (!selected && list.jobs.length) selected = list.jobs[0].id;
    renderList(list);
    if (selected) {
      const job = await getJson("/api/jobs/" + encodeId(selected));
      if (job) {
        renderJob(job);
      } else {
        byId("job").hidden = true;
        byId("missing").hidden = false;
      }
    }
    byId("connection").textContent = "";
    document.body.dataset.updated = String(Date.now());
  } catch (error) {
    byId("connection").textContent = "cannot reach the farm ui server (" + error.message + ")";
  } finally {
    setTimeout(tick, POLL_MS);
  }
}

tick();
