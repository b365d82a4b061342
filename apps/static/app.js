// Demo page: record or pick audio, convert it to 16 kHz mono WAV in the browser (Web Audio), and
// POST it to the local OpenAI-compatible endpoint. Converting here means the server needs no
// ffmpeg for MediaRecorder's webm/opus or for formats libsndfile cannot read.
"use strict";

const $ = (id) => document.getElementById(id);
const RATE = 16000;
let pending = null;          // {blob, name} waiting to be sent
let recorder = null;

$("origin").textContent = location.origin;

function setStatus(msg, isError = false) {
  $("status").textContent = msg;
  $("status").classList.toggle("error", isError);
}

async function loadModels() {
  try {
    const res = await fetch("/v1/models");
    const body = await res.json();
    for (const m of body.data) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = m.id;
      $("model").appendChild(opt);
    }
  } catch (e) {
    setStatus("Could not list models: " + e, true);
  }
}

// Decode anything the browser can play, resample to 16 kHz and mix down to mono.
async function toWav16k(blob) {
  const data = await blob.arrayBuffer();
  const decoded = await new OfflineAudioContext(1, 1, RATE).decodeAudioData(data);
  const frames = Math.max(1, Math.ceil(decoded.duration * RATE));
  const ctx = new OfflineAudioContext(1, frames, RATE);
  const src = ctx.createBufferSource();
  src.buffer = decoded;
  src.connect(ctx.destination);
  src.start();
  const mono = (await ctx.startRendering()).getChannelData(0);
  return encodeWav(mono, RATE);
}

function encodeWav(samples, rate) {
  const buf = new ArrayBuffer(44 + samples.length * 2);
  const v = new DataView(buf);
  const str = (off, s) => { for (let i = 0; i < s.length; i++) v.setUint8(off + i, s.charCodeAt(i)); };
  str(0, "RIFF"); v.setUint32(4, 36 + samples.length * 2, true); str(8, "WAVE");
  str(12, "fmt "); v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true);
  v.setUint32(24, rate, true); v.setUint32(28, rate * 2, true);
  v.setUint16(32, 2, true); v.setUint16(34, 16, true);
  str(36, "data"); v.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    v.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([buf], { type: "audio/wav" });
}

function fmtTime(t) {
  const m = Math.floor(t / 60), s = (t % 60).toFixed(2).padStart(5, "0");
  return `${m}:${s}`;
}

function addSegment(seg) {
  const tr = document.createElement("tr");
  for (const [val, cls] of [[fmtTime(seg.start), "t"], [fmtTime(seg.end), "t"], [seg.text.trim(), ""]]) {
    const td = document.createElement("td");
    td.textContent = val;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  $("segments").querySelector("tbody").appendChild(tr);
}

// Server-sent events of a stream=true transcription: text appears as each chunk is decoded.
async function readStream(res, onEvent) {
  const reader = res.body.getReader(), decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffered.indexOf("\n\n")) >= 0) {
      const line = buffered.slice(0, cut).trim();
      buffered = buffered.slice(cut + 2);
      if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)));
    }
  }
}

async function send() {
  if (!pending) return;
  $("send").disabled = true;
  const t0 = performance.now();
  try {
    let upload = pending.blob, name = pending.name;
    setStatus("Converting to 16 kHz WAV…");
    try {
      upload = await toWav16k(pending.blob);
      name = name.replace(/\.[^.]*$/, "") + ".wav";
    } catch (e) {
      // The browser cannot decode it: let the server try (libsndfile / ffmpeg).
      upload = pending.blob;
    }
    setStatus("Transcribing…");
    const form = new FormData();
    form.append("file", upload, name);
    form.append("model", $("model").value);
    form.append("response_format", "json");
    form.append("stream", "true");
    if ($("language").value) form.append("language", $("language").value);
    const res = await fetch("/v1/audio/transcriptions", { method: "POST", body: form });
    if (!res.ok) {
      const body = await res.json();
      throw new Error(body.error ? body.error.message : res.statusText);
    }
    $("text").textContent = "";
    $("meta").textContent = "";
    $("segments").querySelector("tbody").replaceChildren();
    $("result").hidden = false;
    await readStream(res, (ev) => {
      if (ev.type === "transcript.text.delta") {
        $("text").textContent += ev.delta;
        addSegment({ start: ev.start, end: ev.end, text: ev.delta });
      } else if (ev.type === "transcript.text.done") {
        $("text").textContent = ev.text;
      } else if (ev.type === "error") {
        throw new Error(ev.error.message);
      }
    });
    const secs = (performance.now() - t0) / 1000;
    const audioSecs = upload.type === "audio/wav" ? ` · audio ${((upload.size - 44) / 32000).toFixed(1)} s` : "";
    $("meta").textContent = `streamed${audioSecs} · answered in ${secs.toFixed(1)} s · model ${$("model").value}`;
    setStatus(`Done: ${pending.name}`);
  } catch (e) {
    setStatus("Error: " + e.message, true);
  } finally {
    $("send").disabled = false;
  }
}

$("file").addEventListener("change", () => {
  const f = $("file").files[0];
  if (!f) return;
  pending = { blob: f, name: f.name };
  $("send").disabled = false;
  setStatus(`Ready: ${f.name} (${(f.size / 1024).toFixed(0)} KiB)`);
});

$("record").addEventListener("click", async () => {
  if (recorder && recorder.state === "recording") {
    recorder.stop();
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      $("record").textContent = "● Record";
      $("record").classList.remove("recording");
      pending = { blob: new Blob(chunks, { type: recorder.mimeType }), name: "recording.webm" };
      send();
    };
    recorder.start();
    $("record").textContent = "■ Stop";
    $("record").classList.add("recording");
    setStatus("Recording… press Stop to transcribe.");
  } catch (e) {
    setStatus("Microphone unavailable: " + e.message, true);
  }
});

$("send").addEventListener("click", send);
loadModels();
