// MiniGPT-4 web chat: a small client of this server's own /v1/chat/completions (stream: true).
// No external scripts or styles: everything the page needs comes from this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  model: null,          // model id from /v1/models
  presets: {},          // name -> {prompt, help, needs_question}
  messages: [],         // [{role, text, images: [dataURL], preset}]
  pending: [],          // images attached to the next question (data URLs)
  controller: null,     // AbortController of the running request
};

// --- setup ------------------------------------------------------------------------------------
function authHeaders() {
  const key = $("api-key").value || localStorage.getItem("minigpt4-api-key") || "";
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path) {
  const r = await fetch(path, { headers: authHeaders() });
  if (r.status === 401) { $("key-label").hidden = false; throw new Error("this server needs an API key: enter it above"); }
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

async function init() {
  $("api-key").value = localStorage.getItem("minigpt4-api-key") || "";
  try {
    const models = await api("/v1/models");
    state.model = models.data[0].id;
    $("model-name").textContent = state.model;
    const presets = await api("/v1/presets");
    for (const p of presets.data) {
      state.presets[p.name] = p;
      const opt = document.createElement("option");
      opt.value = p.name; opt.textContent = p.name; opt.title = p.help;
      $("preset").appendChild(opt);
    }
    showError("");
  } catch (e) { showError(e.message); }
  presetChanged();
}

function presetChanged() {
  const p = state.presets[$("preset").value];
  $("preset-help").textContent = p ? `Task “${p.name}”: ${p.help}.` : "";
  $("prompt").placeholder = p && !p.needs_question
    ? `Optional extra instructions for “${p.name}” (Enter to send)`
    : "Ask about the image…  (Enter to send, Shift+Enter for a new line)";
}

// --- images -----------------------------------------------------------------------------------
function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const fr = new FileReader();
    fr.onload = () => resolve(fr.result);
    fr.onerror = () => reject(fr.error);
    fr.readAsDataURL(file);
  });
}

async function addFiles(files) {
  for (const f of files) {
    if (!f.type.startsWith("image/")) { showError(`${f.name} is not an image`); continue; }
    state.pending.push(await readAsDataURL(f));
  }
  renderAttachments();
}

function renderAttachments() {
  const box = $("attachments");
  box.replaceChildren();
  state.pending.forEach((url, i) => {
    const t = document.createElement("div"); t.className = "thumb";
    const img = document.createElement("img"); img.src = url; img.alt = `attachment ${i + 1}`;
    const x = document.createElement("button"); x.type = "button"; x.textContent = "×"; x.title = "remove";
    x.onclick = () => { state.pending.splice(i, 1); renderAttachments(); };
    t.append(img, x); box.appendChild(t);
  });
}

// --- HTML preview (website preset) --------------------------------------------------------------
// Mirrors minigpt4.chat.presets.extract_html: the ```html block or <html> document, else a
// fragment wrapped in a page. Rendered in an iframe with sandbox="" (no scripts, no same origin).
function extractHtml(answer) {
  const fence = answer.match(/```(?:html|HTML)?\s*\n([\s\S]*?)(?:```|$)/);
  const body = (fence ? fence[1] : answer).trim();
  const doc = body.match(/<!DOCTYPE html[\s\S]*?<\/html\s*>|<html[\s\S]*?<\/html\s*>/i);
  if (doc) return doc[0];
  if (!/<\s*[a-zA-Z][^>]*>/.test(body)) return null;
  return `<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Page</title>\n</head>\n<body>\n${body}\n</body>\n</html>\n`;
}

function renderPreview(container, html) {
  let box = container.querySelector(".preview");
  if (!box) {
    box = document.createElement("div"); box.className = "preview";
    const bar = document.createElement("div"); bar.className = "bar";
    const label = document.createElement("span"); label.className = "grow"; label.textContent = "Preview (sandboxed)";
    const copy = document.createElement("button"); copy.type = "button"; copy.className = "copy-html"; copy.textContent = "Copy HTML";
    const dl = document.createElement("button"); dl.type = "button"; dl.className = "download-html"; dl.textContent = "Download";
    bar.append(label, copy, dl);
    const frame = document.createElement("iframe");
    frame.setAttribute("sandbox", "");  // nothing in the generated page may run or reach this origin
    frame.title = "generated page";
    box.append(bar, frame);
    container.appendChild(box);
    copy.onclick = async () => {
      const text = box.dataset.html;
      try { await navigator.clipboard.writeText(text); }
      catch { const ta = document.createElement("textarea"); ta.value = text; document.body.appendChild(ta); ta.select(); document.execCommand("copy"); ta.remove(); }
      copy.textContent = "Copied"; setTimeout(() => (copy.textContent = "Copy HTML"), 1500);
    };
    dl.onclick = () => {
      const a = document.createElement("a");
      a.href = URL.createObjectURL(new Blob([box.dataset.html], { type: "text/html" }));
      a.download = "page.html"; a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 1000);
    };
  }
  box.dataset.html = html;
  box.querySelector("iframe").srcdoc = html;
}

// --- chat rendering -----------------------------------------------------------------------------
function addBubble(msg) {
  $("empty").hidden = true;
  const row = document.createElement("div"); row.className = `msg ${msg.role}`;
  const bubble = document.createElement("div"); bubble.className = "bubble";
  if (msg.images && msg.images.length) {
    const imgs = document.createElement("div"); imgs.className = "images";
    for (const url of msg.images) { const im = document.createElement("img"); im.src = url; im.alt = "image"; imgs.appendChild(im); }
    bubble.appendChild(imgs);
  }
  const text = document.createElement("div"); text.className = "text"; text.textContent = msg.text;
  bubble.appendChild(text);
  row.appendChild(bubble);
  $("chat").appendChild(row);
  row.scrollIntoView({ block: "end" });
  return row;
}

function renderAll() {
  for (const el of [...$("chat").querySelectorAll(".msg")]) el.remove();
  $("empty").hidden = state.messages.length > 0;
  for (const m of state.messages) {
    const row = addBubble(m);
    if (m.role === "assistant" && m.preset === "website") row.classList.add("code");
    if (m.role === "assistant") finishBubble(row, m);
  }
  updateButtons();
}

function finishBubble(row, msg) {
  row.classList.remove("streaming");
  if (msg.preset === "website") {
    const html = extractHtml(msg.text);
    if (html) renderPreview(row.querySelector(".bubble"), html);
  }
  if (msg.meta) {
    let meta = row.querySelector(".meta");
    if (!meta) { meta = document.createElement("div"); meta.className = "meta"; row.querySelector(".bubble").appendChild(meta); }
    meta.textContent = msg.meta;
  }
}

function showError(text) { $("error").textContent = text; $("error").hidden = !text; }
function setStatus(text) { $("status").textContent = text; }

function updateButtons() {
  const busy = state.controller !== null;
  $("send").hidden = busy; $("stop").hidden = !busy;
  $("regenerate").disabled = busy || !state.messages.some((m) => m.role === "assistant");
  $("clear").disabled = busy;
}

// --- requests -----------------------------------------------------------------------------------
function openaiMessages() {
  return state.messages.map((m) => {
    if (m.role === "assistant" || !m.images.length) return { role: m.role, content: m.text };
    const parts = m.images.map((url) => ({ type: "image_url", image_url: { url } }));
    if (m.text) parts.push({ type: "text", text: m.text });
    return { role: "user", content: parts };
  });
}

async function complete() {
  const preset = $("preset").value;
  const body = { model: state.model, messages: openaiMessages(), stream: true,
                 stream_options: { include_usage: true } };
  if (preset) body.preset = preset;
  const maxTokens = parseInt($("max-tokens").value, 10); if (maxTokens > 0) body.max_tokens = maxTokens;
  const temp = parseFloat($("temperature").value); if (!Number.isNaN(temp)) body.temperature = temp;

  const msg = { role: "assistant", text: "", images: [], preset };
  const row = addBubble(msg); row.classList.add("streaming");
  if (preset === "website") row.classList.add("code");
  const textEl = row.querySelector(".text");
  state.controller = new AbortController(); updateButtons(); showError(""); setStatus("thinking…");
  const t0 = performance.now(); let firstToken = null, usage = null;
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", signal: state.controller.signal,
      headers: { "Content-Type": "application/json", ...authHeaders() }, body: JSON.stringify(body),
    });
    if (!r.ok) {
      let message = `HTTP ${r.status}`;
      try { message = (await r.json()).error.message; } catch {}
      if (r.status === 401) $("key-label").hidden = false;
      throw new Error(message);
    }
    const reader = r.body.getReader(); const decoder = new TextDecoder(); let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut); buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const obj = JSON.parse(data);
          if (obj.error) throw new Error(obj.error.message);
          if (obj.usage) usage = obj.usage;
          for (const ch of obj.choices || []) {
            const delta = ch.delta && ch.delta.content;
            if (delta) {
              if (firstToken === null) firstToken = performance.now();
              msg.text += delta; textEl.textContent = msg.text; row.scrollIntoView({ block: "end" });
            }
          }
        }
      }
    }
    const secs = ((performance.now() - t0) / 1000).toFixed(1);
    msg.meta = usage ? `${usage.completion_tokens} tokens · ${secs} s` : `${secs} s`;
    setStatus("");
  } catch (e) {
    if (e.name === "AbortError") { msg.meta = "stopped"; setStatus(""); }
    else { showError(e.message); setStatus(""); }
  } finally {
    state.controller = null;
    if (msg.text || msg.meta === "stopped") state.messages.push(msg); else row.remove();
    finishBubble(row, msg);
    updateButtons();
  }
}

async function send(ev) {
  if (ev) ev.preventDefault();
  if (state.controller) return;
  const text = $("prompt").value.trim();
  const preset = state.presets[$("preset").value];
  if (!text && !state.pending.length && !(preset && !preset.needs_question)) return;
  if (!text && !state.pending.length && !state.messages.length) { showError("attach an image or write a question"); return; }
  const msg = { role: "user", text, images: state.pending.slice() };
  state.messages.push(msg); addBubble(msg);
  state.pending = []; renderAttachments(); $("prompt").value = ""; autoGrow();
  await complete();
}

async function regenerate() {
  if (state.controller) return;
  while (state.messages.length && state.messages[state.messages.length - 1].role === "assistant") state.messages.pop();
  if (!state.messages.length) return;
  renderAll();
  await complete();
}

function clearChat() {
  if (state.controller) return;
  state.messages = []; state.pending = []; renderAttachments(); renderAll(); showError("");
}

function autoGrow() { const p = $("prompt"); p.style.height = "auto"; p.style.height = `${Math.min(p.scrollHeight, 180)}px`; }

// --- events -------------------------------------------------------------------------------------
$("composer").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) send(e); });
$("prompt").addEventListener("input", autoGrow);
$("file-input").addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("regenerate").addEventListener("click", regenerate);
$("clear").addEventListener("click", clearChat);
$("preset").addEventListener("change", presetChanged);
$("api-key").addEventListener("change", () => { localStorage.setItem("minigpt4-api-key", $("api-key").value); init(); });
document.addEventListener("paste", (e) => {
  const files = [...(e.clipboardData ? e.clipboardData.files : [])].filter((f) => f.type.startsWith("image/"));
  if (files.length) { e.preventDefault(); addFiles(files); }
});
let dragDepth = 0;
document.addEventListener("dragenter", (e) => { e.preventDefault(); dragDepth++; $("drop-overlay").hidden = false; });
document.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; $("drop-overlay").hidden = true; } });
document.addEventListener("dragover", (e) => e.preventDefault());
document.addEventListener("drop", (e) => {
  e.preventDefault(); dragDepth = 0; $("drop-overlay").hidden = true;
  addFiles([...e.dataTransfer.files]);
});

init();
