// Lists the server's models (GET /api/models) with a player for each.
// Names come from the server's folders: they are set as text, never as HTML.
"use strict";

function facts(model) {
  if (model.error) return model.error;
  const mb = (model.size_bytes / 1e6).toFixed(1);
  return `${model.width}\u00d7${model.height} \u00b7 ${model.fps} fps \u00b7 ${model.duration_s.toFixed(1)} s \u00b7 ${mb} MB`;
}

function card(model) {
  const item = document.createElement("li");
  item.className = "model";
  const video = document.createElement("video");
  video.src = model.url;
  video.controls = true;
  video.loop = true;
  video.muted = true;
  video.playsInline = true;
  video.preload = "metadata";
  // HEVC and some other codecs play in few browsers: say so instead of showing a black box
  video.addEventListener("error", () => {
    details.textContent = `${facts(model)} \u00b7 this browser cannot play this video`;
  });
  const info = document.createElement("div");
  info.className = "info";
  const name = document.createElement("h2");
  name.textContent = model.name;
  const details = document.createElement("p");
  details.className = "facts";
  details.textContent = facts(model);
  const badge = document.createElement("span");
  badge.className = model.prepared ? "badge prepared" : "badge unprepared";
  badge.textContent = model.prepared ? "prepared" : "not prepared yet";
  info.append(name, details, badge);
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
