// Lists the server's models (GET /api/models) with a player for each.
// Names come from the server's folders: they are set as text, never as HTML.
"use strict";

function facts(model) {
  if (model.error) return model.error;
  const mb = (model.size_bytes / 1e6).toFixed(1);
  return `${model.width}\u00d7${model.height} \u00b7 ${model.fps} fps \u00b7 ${model.duration_s.toFixed(1)} s \u00b7 ${mb} MB`;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function card(model) {
  const details = element("p", "facts", facts(model));
  const badge = model.prepared
    ? element("span", "badge prepared", "prepared")
    : element("span", "badge unprepared", "not prepared yet");
  const info = element("div", "info");
  info.append(element("h2", "", model.name), details, badge);

  const video = element("video");
  // "#t=0.1": the browser seeks there on load, so the card shows a frame, not a black box
  video.src = `${model.url}#t=0.1`;
  video.controls = true;
  video.loop = true;
  video.muted = true;
  video.playsInline = true;
  video.preload = "metadata";
  // HEVC and some other codecs play in few browsers: say so instead of showing a black box
  const cannotShow = () => { details.textContent = `${facts(model)} \u00b7 this browser cannot show this video`; };
  video.addEventListener("error", cannotShow);
  video.addEventListener("loadedmetadata", () => { if (!video.videoWidth) cannotShow(); });

  const item = element("li", "model");
  item.append(video, info);
  return item;
}

async function main() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("/api/models");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const models = await response.json();
    document.getElementById("models").append(...models.map(card));
    status.textContent = models.length
      ? `${models.length} model${models.length === 1 ? "" : "s"}`
      : "No model videos found.";
  } catch (err) {
    status.textContent = `Cannot load the model list (${err.message}).`;
  }
}

main();
