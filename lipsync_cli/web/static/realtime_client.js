// The OpenAI Realtime API over WebRTC, as the original system connected to it: a client secret
// from this server's /token (the server's API key never reaches the page), an SDP offer POSTed to
// the Realtime calls endpoint (GET /api/config names it; a fake one in tests), the `oai-events`
// data channel for events, and the agent's voice as the remote audio track.

const ICE_GATHER_TIMEOUT_MS = 2000; // the offer goes with the candidates found by then (no trickle ICE)

async function json(response, what) {
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(`${what}: HTTP ${response.status}${body.error ? ` (${body.error})` : ""}`);
  }
  return response.json();
}

function iceGathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ICE_GATHER_TIMEOUT_MS);
  });
}

// Resolves to {pc, events, remoteStream, close()} once the agent's track has arrived.
// micStream: what the user says goes to the agent. onEvent(event): each data-channel event (parsed).
export async function connectRealtime({ micStream, onEvent }) {
  const config = await json(await fetch("/api/config"), "GET /api/config");
  const secret = await json(await fetch("/token", { method: "POST" }), "POST /token");
  const pc = new RTCPeerConnection();
  const remote = new Promise((resolve) => {
    pc.ontrack = (e) => resolve(e.streams[0] || new MediaStream([e.track]));
  });
  for (const track of micStream.getAudioTracks()) pc.addTrack(track, micStream);
  const events = pc.createDataChannel("oai-events");
  events.onmessage = (e) => {
    let event;
    try { event = JSON.parse(e.data); } catch { return; } // not an event: nothing to act on
    onEvent(event);
  };
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    const answer = await fetch(config.realtime_calls_url, {
      method: "POST", body: pc.localDescription.sdp,
      headers: { Authorization: `Bearer ${secret.value}`, "Content-Type": "application/sdp" },
    });
    if (!answer.ok) throw new Error(`the Realtime API refused the call: HTTP ${answer.status}`);
    await pc.setRemoteDescription({ type: "answer", sdp: await answer.text() });
  } catch (err) {
    pc.close();
    throw err;
  }
  const remoteStream = await remote;
  return {
    pc, events, remoteStream,
    send(event) { if (events.readyState === "open") events.send(JSON.stringify(event)); },
    close() { events.close(); pc.close(); },
  };
}
