// The browser client every tomaat prediction server serves at /app/: a form built from /info, the upload as a
// binary v2 part, and the results over the input in NiiVue. Everything the server says is inserted as text
// (textContent), never as HTML; nothing is fetched from another origin. Where the server keeps volumes
// (/info's volume_store), the scan is uploaded once (POST /volumes) and named by its id from then on, so a
// run with only a parameter changed sends a few hundred bytes; to a far server a .nii or an uncompressed
// .mha is compressed in the browser first (CompressionStream), as the Python client does. Where the service
// guards predictions (/info's access), the page asks for an access token first and sends it with every request.
import { NVImage, NVMesh, Niivue } from "./niivue.js";

const base = new URL("..", window.location.href); // the service's root: /app/ is one level below it
const $ = (id) => document.getElementById(id);
const state = { info: null, files: {}, values: {}, viewer: null, input: null, overlays: [], urls: [], stored: {}, far: false };

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

// When things happened, for benchmarks/browser.py: once the next frame is out (a task queued from the frame's
// own callback runs after it is painted), not when the code ran.
function mark(name) {
  requestAnimationFrame(() =>
    setTimeout(() => {
      document.body.dataset[name] = String(performance.now());
    }, 0),
  );
}

// The same, at once: where the time between two painted marks went (benchmarks/browser.py --phases).
function note(name) {
  document.body.dataset[name] = String(performance.now());
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = isError ? `error: ${text}` : text;
  status.classList.toggle("error", isError);
}

// ---- signing in: an access token, for this tab only -----------------------------------------------------

// The token lives in sessionStorage: it goes with the tab (not to other tabs, not to the disk after the browser
// closes, as localStorage would), and only ever in the Authorization header, never in a URL, where proxies,
// logs and the history would keep it. It is never written to the console or into the page.
const TOKEN_KEY = "tomaat-access-token";
const METHOD_WORDS = {
  token: "an access token it issued",
  oidc: "an access token from your identity provider",
  certificate: "a client certificate",
  network: "computers on the networks it trusts",
};
const signin = { waiting: null };

function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null; // storage turned off: no token, so the sign-in stays
  }
}

function authorization() {
  const held = token();
  return held ? { Authorization: `Bearer ${held}` } : {};
}

// A refusal the page acts on: 401 asks for a token again; anything else is said on the status line.
class Refusal extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function refuseOn(answer) {
  const problem = serverMessage(answer.status, answer.text);
  if (problem) throw new Refusal(answer.status, problem);
}

// Shows the sign-in (the stored token forgotten) and resolves once a token is given, or the user goes on
// without one where the server also lets in certificates or networks (then the server decides).
function askForToken(message = "", methods = null) {
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // nothing stored
  }
  if (methods) {
    const words = methods.map((method) => METHOD_WORDS[method] || method);
    $("signin-note").textContent = `This service lets in ${words.join(", or ")}.`;
    $("anonymous").hidden = !methods.some((method) => method === "certificate" || method === "network");
  }
  $("signin-message").textContent = message;
  $("signin-message").hidden = !message;
  $("signed-in").hidden = true;
  $("signin").hidden = false;
  $("token").value = "";
  $("token").focus();
  return new Promise((resolve) => {
    signin.waiting = resolve;
  });
}

function signedIn() {
  $("signin").hidden = true;
  $("token").value = "";
  $("signed-in").hidden = token() === null;
  const resolve = signin.waiting;
  signin.waiting = null;
  if (resolve) resolve();
}

function setUpSignIn() {
  $("signin").addEventListener("submit", (event) => {
    event.preventDefault(); // the policy forbids form submissions anyway (form-action 'none')
    const given = $("token").value.trim();
    if (!/^[\x21-\x7e]+$/.test(given)) {
      $("signin-message").textContent = "enter the access token: one line of letters, digits and punctuation";
      $("signin-message").hidden = false;
      return;
    }
    try {
      sessionStorage.setItem(TOKEN_KEY, given);
    } catch {
      $("signin-message").textContent = "this browser keeps no session storage for this page; allow it to sign in";
      $("signin-message").hidden = false;
      return;
    }
    signedIn();
  });
  $("anonymous").addEventListener("click", signedIn);
  $("signout").addEventListener("click", () => {
    Object.keys(state.stored).forEach(forget); // with the token still there: they are ours to delete
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // nothing stored
    }
    window.location.reload(); // nothing of this sign-in stays in the page
  });
}

// ---- the viewer: NiiVue on WebGL2, or a plain canvas slice where WebGL2 is missing ------------------------

function hasWebGL2() {
  try {
    return Boolean(document.createElement("canvas").getContext("webgl2"));
  } catch {
    return false;
  }
}

class NiiVueViewer {
  async attach(canvas) {
    this.nv = new Niivue({
      backColor: [0, 0, 0, 1],
      crosshairColor: [0.2, 0.8, 1, 1], // not red: red is the labels' colour
      show3Dcrosshair: true,
      isResizeCanvas: true,
      logLevel: "error",
      loadingText: "", // its "loading ..." would stay until a scan is shown: the page's own note says what to do
    });
    await this.nv.attachToCanvas(canvas);
    this.nv.setSliceType(this.nv.sliceTypeMultiplanar);
    // Three slices and the 3D view; where WebGL is rendered in software (no GPU: SwiftShader, llvmpipe), the 3D
    // view's raycasting takes about half a second a frame, so it waits until asked for (docs/browser.md).
    const info = this.nv.gl.getExtension("WEBGL_debug_renderer_info");
    const renderer = info ? String(this.nv.gl.getParameter(info.UNMASKED_RENDERER_WEBGL)) : "";
    this.software = /swiftshader|llvmpipe|software/i.test(renderer);
    document.body.dataset.renderer = this.software ? "software" : "gpu";
    const toggle = $("render3d");
    toggle.checked = !this.software;
    $("render3d-control").hidden = false;
    toggle.addEventListener("change", () => this.render3D(toggle.checked));
    this.render3D(toggle.checked);
    return this;
  }
  render3D(on) {
    this.nv.opts.multiplanarShowRender = on ? 1 : 0; // 1: always, 0: never
    this.nv.drawScene();
  }
  show(image) {
    this.nv.volumes = [];
    this.nv.meshes = [];
    this.nv.addVolume(image);
  }
  clear() {
    // drop earlier results but keep the input: far cheaper than showing it again
    while (this.nv.volumes.length > 1) this.nv.removeVolumeByIndex(this.nv.volumes.length - 1);
    if (this.nv.drawBitmap) this.nv.closeDrawing();
    this.nv.meshes = [];
  }
  overlay(image) {
    // A label map on the input's grid with values below 256 is NiiVue's drawing layer (label 1 red, 2 green,
    // ...): one uint8 texture, much cheaper to show than a blended overlay volume, which is the fallback.
    const small = image.hdr.datatypeCode === 2 || image.global_max <= 255;
    if (small && this.nv.drawBitmap === null && this.nv.loadDrawing(image)) {
      this.nv.setDrawOpacity(Number($("opacity").value));
      return;
    }
    this.nv.addVolume(image);
  }
  async mesh(buffer, name) {
    const mesh = await NVMesh.readMesh(buffer, name, this.nv.gl, 1, new Uint8Array([255, 190, 40, 255]));
    this.nv.addMesh(mesh);
  }
  points(lps, name) {
    // NiiVue's connectome nodes: spheres in the 3D view, also drawn over the slices (its world is RAS)
    const [, nx, ny, nz] = this.nv.volumes[0].hdr.dims;
    const [sx, sy, sz] = this.nv.volumes[0].hdr.pixDims.slice(1, 4);
    const size = Math.max(nx * sx, ny * sy, nz * sz) / 60; // a sphere's radius in mm: visible at any scale
    const nodes = lps.map(([x, y, z], index) => ({ name: String(index + 1), x: -x, y: -y, z, colorValue: 1, sizeValue: 1 }));
    const json = { name, nodes, edges: [], nodeColormap: "violet", nodeMinColor: 0, nodeMaxColor: 1, nodeScale: size, showLegend: false };
    this.nv.addMesh(this.nv.loadConnectomeAsMesh(json));
    this.nv.drawScene();
  }
  opacity(value) {
    for (let index = 1; index < this.nv.volumes.length; index++) this.nv.setOpacity(index, value);
    if (this.nv.drawBitmap) this.nv.setDrawOpacity(value);
  }
  crosshairLPS() {
    const [x, y, z] = this.nv.frac2mm(this.nv.scene.crosshairPos); // NiiVue's world is RAS
    return [-x, -y, z];
  }
}

// Draws the middle axial slice of the input, and the overlays in red, with a 2D canvas only.
class CanvasViewer {
  attach(canvas) {
    this.canvas = canvas;
    this.layers = [];
    return this;
  }
  show(image) {
    this.layers = [image];
    this.draw();
  }
  clear() {
    this.layers = this.layers.slice(0, 1);
    this.draw();
  }
  overlay(image) {
    this.layers.push(image);
    this.draw();
  }
  async mesh() {}
  points() {} // listed beside the viewer only: one slice rarely holds them
  opacity(value) {
    this.alpha = value;
    this.draw();
  }
  crosshairLPS() {
    const image = this.layers[0];
    const centre = image.hdr.dims.slice(1, 4).map((n) => (n - 1) / 2);
    const ras = image.vox2mm(centre, image.matRAS);
    return [-ras[0], -ras[1], ras[2]];
  }
  draw() {
    const [image, ...overlays] = this.layers;
    if (!image) return;
    const [, nx, ny, nz] = image.hdr.dims;
    const z = Math.floor(nz / 2);
    const context = this.canvas.getContext("2d");
    this.canvas.width = nx;
    this.canvas.height = ny;
    const pixels = context.createImageData(nx, ny);
    let low = Infinity;
    let high = -Infinity;
    for (const value of image.img) {
      if (value < low) low = value;
      if (value > high) high = value;
    }
    const alpha = this.alpha ?? 0.5;
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++) {
        const at = x + nx * (y + ny * z);
        const gray = high > low ? (255 * (image.img[at] - low)) / (high - low) : 0;
        const labelled = overlays.some((overlay) => overlay.img[at] > 0);
        const out = 4 * (x + nx * (ny - 1 - y));
        pixels.data[out] = labelled ? (1 - alpha) * gray + alpha * 255 : gray;
        pixels.data[out + 1] = labelled ? (1 - alpha) * gray : gray;
        pixels.data[out + 2] = labelled ? (1 - alpha) * gray : gray;
        pixels.data[out + 3] = 255;
      }
    }
    context.putImageData(pixels, 0, 0);
  }
}

// ---- the form, one control per input element -----------------------------------------------------------

function hooked(node, destination) {
  node.dataset.testid = `input-${destination}`;
  return node;
}

const CONTROLS = {
  volume(spec, box) {
    // one image file, or the files of one DICOM series (converted to NIfTI here, in the browser)
    // (several files: a DICOM series' slices; the button names the usual case, one scan file)
    const input = hooked(element("input", { type: "file", multiple: "" }), spec.destination);
    const folder = element("input", { type: "file", webkitdirectory: "" });
    const drop = element("div", { class: "drop" }, "or drop a scan file (NIfTI, MHA, NRRD) or a DICOM series here");
    const take = async (files) => {
      document.body.dataset.picked = String(performance.now());
      try {
        const file = isImageFile(files) ? files[0] : await fromDicom(files);
        state.files[spec.destination] = file;
        drop.textContent = file.name;
        if (spec.destination === firstVolume()) await showInput(file);
      } catch (error) {
        delete state.files[spec.destination];
        setStatus(error.message || String(error), true);
      }
    };
    input.addEventListener("change", () => input.files.length && take(Array.from(input.files)));
    folder.addEventListener("change", () => folder.files.length && take(Array.from(folder.files)));
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      if (event.dataTransfer.files.length) take(Array.from(event.dataTransfer.files));
    });
    const choosers = element("div", { class: "choosers" });
    for (const [chooser, text, hook] of [
      [input, "Choose a scan file…", `choose-${spec.destination}`],
      [folder, "Choose a DICOM folder…", `choose-folder-${spec.destination}`],
    ]) {
      const label = element("label", { class: "chooser" }, text);
      label.dataset.testid = hook;
      label.append(chooser);
      choosers.append(label);
    }
    box.append(choosers, drop);
  },
  slider(spec, box) {
    const { minimum, maximum } = spec;
    const start = (minimum + maximum) / 2; // as TOMAAT-Slicer starts it
    const step = maximum > minimum ? (maximum - minimum) / 200 : 1;
    const range = hooked(element("input", { type: "range", min: minimum, max: maximum, step, value: start }), spec.destination);
    const number = hooked(element("input", { type: "number", min: minimum, max: maximum, step: "any", value: start }), spec.destination);
    const low = element("span", { class: "bound" }, String(minimum));
    const high = element("span", { class: "bound" }, String(maximum));
    low.dataset.testid = `minimum-${spec.destination}`;
    high.dataset.testid = `maximum-${spec.destination}`;
    range.setAttribute("aria-label", `${spec.destination}, from ${minimum} to ${maximum}`);
    number.setAttribute("aria-label", spec.destination);
    state.values[spec.destination] = String(start);
    range.addEventListener("input", () => {
      number.value = range.value;
      state.values[spec.destination] = range.value;
    });
    number.addEventListener("input", () => {
      range.value = number.value;
      state.values[spec.destination] = number.value;
    });
    const row = element("div", { class: "slider" });
    row.append(low, range, high, number);
    box.append(row);
  },
  checkbox(spec, box) {
    const input = hooked(element("input", { type: "checkbox" }), spec.destination);
    const label = element("label");
    label.append(input, document.createTextNode(` ${spec.text || spec.destination}`));
    state.values[spec.destination] = "False";
    input.addEventListener("change", () => {
      state.values[spec.destination] = input.checked ? "True" : "False";
    });
    box.append(label);
  },
  radiobutton(spec, box) {
    spec.options.forEach((option, index) => {
      const input = hooked(element("input", { type: "radio", name: `radio-${spec.destination}`, value: option }), spec.destination);
      input.checked = index === 0; // as TOMAAT-Slicer starts it
      input.addEventListener("change", () => {
        state.values[spec.destination] = option;
      });
      const label = element("label");
      label.append(input, document.createTextNode(` ${option}`));
      box.append(label, element("br"));
    });
    state.values[spec.destination] = spec.options[0];
  },
  fiducials(spec, box) {
    const text = hooked(element("input", { type: "text", placeholder: "x,y,z;x,y,z (LPS mm)" }), spec.destination);
    const add = element("button", { type: "button" }, "add the crosshair's point");
    add.dataset.testid = `add-${spec.destination}`;
    state.values[spec.destination] = "";
    text.addEventListener("input", () => {
      state.values[spec.destination] = text.value;
    });
    add.addEventListener("click", () => {
      if (!state.input) return setStatus("load a volume first, then click on it to place the crosshair", true);
      const point = state.viewer.crosshairLPS().map((v) => v.toFixed(3)).join(",");
      text.value = text.value ? `${text.value};${point}` : point;
      state.values[spec.destination] = text.value;
    });
    box.append(text, add);
  },
  transform(spec, box) {
    const input = hooked(element("input", { type: "file", accept: ".mat,.h5,.nii.gz" }), spec.destination);
    input.addEventListener("change", () => {
      if (input.files.length) state.files[spec.destination] = input.files[0];
    });
    box.append(input);
  },
};

const IMAGE_SUFFIXES = [".nii", ".nii.gz", ".mha", ".nrrd"];

function isImageFile(files) {
  return files.length === 1 && IMAGE_SUFFIXES.some((suffix) => files[0].name.toLowerCase().endsWith(suffix));
}

// dcm2niix's WebAssembly build, in a worker of its own, loaded the first time a DICOM series is given
async function fromDicom(files) {
  setStatus(`converting ${files.length} DICOM file(s)`);
  const { Dcm2niix } = await import("./dcm2niix/index.js");
  const converter = new Dcm2niix();
  await converter.init();
  const made = await converter.input(files).run();
  const images = made.filter((file) => /\.nii(\.gz)?$/i.test(file.name));
  converter.worker?.terminate();
  if (images.length !== 1) {
    throw new Error(`the ${files.length} file(s) hold ${images.length} image series; expected one DICOM series`);
  }
  return images[0];
}

function firstVolume() {
  const volume = state.info.input_interface.find((spec) => spec.type === "volume");
  return volume ? volume.destination : null;
}

async function showInput(file) {
  try {
    state.input = await NVImage.loadFromFile({ file, name: file.name });
    note("loaded");
    state.viewer.show(state.input);
    $("empty").hidden = true;
    note("added");
    state.overlays = [];
    setStatus(`${file.name}: ${state.input.hdr.dims.slice(1, 4).join(" x ")} voxels`);
    mark("shown");
  } catch (error) {
    state.input = null;
    setStatus(`${file.name} could not be shown: ${error.message || error}`, true);
  }
}

function buildForm(info) {
  $("name").textContent = info.name || "tomaat service";
  $("description").textContent = info.description || "";
  // modality, anatomy and task where they say something: "any" (or nothing) is left out
  const facts = [info.modality, info.anatomy, info.task].filter((fact) => fact && !/^\s*any\s*$/i.test(fact));
  $("facts").textContent = facts.join(" · ");
  $("facts").hidden = facts.length === 0;
  $("model").textContent = info.disclaimer || "";
  document.title = info.name || "tomaat";
  const form = $("form");
  for (const spec of info.input_interface) {
    const box = element("fieldset");
    box.append(element("legend", {}, `${spec.destination} (${spec.type})`));
    const build = CONTROLS[spec.type];
    if (build) build(spec, box);
    else box.append(element("p", {}, `this page cannot fill a ${spec.type} input`));
    form.append(box);
  }
}

// ---- sending ---------------------------------------------------------------------------------------------

function base64(bytes) {
  let text = "";
  for (let at = 0; at < bytes.length; at += 0x8000) text += String.fromCharCode(...bytes.subarray(at, at + 0x8000));
  return btoa(text);
}

function unbase64(text) {
  const raw = atob(text.replace(/\s+/g, ""));
  const bytes = new Uint8Array(raw.length);
  for (let at = 0; at < raw.length; at++) bytes[at] = raw.charCodeAt(at);
  return bytes;
}

async function buildRequest(references = {}) {
  const body = new FormData();
  for (const spec of state.info.input_interface) {
    const name = spec.destination;
    if (spec.type === "volume") {
      if (!state.files[name]) throw new Error(`choose an image file for '${name}'`);
      if (references[name]) {
        body.append(name, `volume_id:${references[name]}`); // the volume the server keeps for us
      } else {
        const [blob, filename] = await uploadable(state.files[name], name); // a binary v2 part
        body.append(name, blob, filename);
      }
    } else if (spec.type === "transform") {
      const file = state.files[name];
      if (!file) throw new Error(`choose a transform file for '${name}'`);
      const kind = file.name.toLowerCase().endsWith(".nii.gz") ? "nii.gz" : file.name.split(".").pop().toLowerCase();
      body.append(name, `${kind}\n${base64(new Uint8Array(await file.arrayBuffer()))}`);
    } else {
      body.append(name, state.values[name] ?? "");
    }
  }
  return body;
}

function elapsed(started) {
  return `working… ${((performance.now() - started) / 1000).toFixed(1)} s`;
}

// One POST with its upload's progress; `what` is what the status line says while the body goes.
function send(path, body, started, what = "uploading") {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    const progress = $("progress");
    let timer = null;
    request.open("POST", new URL(path, base));
    for (const [name, value] of Object.entries(authorization())) request.setRequestHeader(name, value);
    request.responseType = "text";
    request.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable) return;
      progress.value = event.loaded / event.total;
      setStatus(`${what} ${Math.round((100 * event.loaded) / event.total)}%`);
    });
    request.upload.addEventListener("load", () => {
      note(path === "predict" ? "uploaded" : "stored");
      progress.value = 1;
      timer = setInterval(() => setStatus(elapsed(started)), 100);
    });
    request.addEventListener("load", () => {
      if (path === "predict") note("answered");
      clearInterval(timer);
      resolve({ status: request.status, text: request.responseText });
    });
    request.addEventListener("error", () => {
      clearInterval(timer);
      reject(new Error("the server could not be reached"));
    });
    progress.hidden = false;
    progress.value = 0;
    request.send(body);
  });
}

// ---- what goes on the wire: compressed where it pays, uploaded once where the server keeps volumes --------

// The same rule as the Python client (tomaat/client/compression.py): a far server, at least 256 KiB, and a
// sample that deflates to at most 0.9 of its size. Far: the quickest of the page's requests so far (the page,
// its scripts, /info) took 7.5 ms or more from request to first byte, a round trip on an open connection
// (the client times two, a new connection and its request, against 15 ms).
const NEAR_MS = 7.5;
const MIN_BYTES = 256 * 1024;
const MAX_RATIO = 0.9;
const SAMPLES = 16;
const SAMPLE_BYTES = 32 * 1024;

function measureDistance() {
  const entries = [...performance.getEntriesByType("navigation"), ...performance.getEntriesByType("resource")];
  const ours = entries.filter((entry) => entry.name.startsWith(base.origin) && entry.responseStart > 0);
  const quickest = Math.min(...ours.map((entry) => entry.responseStart - entry.requestStart));
  state.far = Number.isFinite(quickest) && quickest >= NEAR_MS;
  document.body.dataset.link = state.far ? "far" : "near";
}

function squeezed(blob, format) {
  return new Response(blob.stream().pipeThrough(new CompressionStream(format))).blob();
}

async function deflatesWell(blob) {
  const step = Math.max(SAMPLE_BYTES, Math.floor((blob.size - SAMPLE_BYTES) / (SAMPLES - 1)));
  const slices = [];
  for (let at = 0; at < blob.size && slices.length < SAMPLES; at += step) slices.push(blob.slice(at, at + SAMPLE_BYTES));
  const sample = new Blob(slices);
  return (await squeezed(sample, "deflate")).size <= MAX_RATIO * sample.size;
}

// An MHA file's header lines, up to and with `ElementDataFile = LOCAL`; null where it has none, or holds
// anything but plain ASCII (then the file is sent as it is).
async function mhaHeader(file) {
  const head = new Uint8Array(await file.slice(0, 65536).arrayBuffer());
  let text = ""; // one character per byte, so that offsets in the text are offsets in the file
  for (let at = 0; at < head.length; at += 0x8000) text += String.fromCharCode(...head.subarray(at, at + 0x8000));
  const last = /^[ \t]*ElementDataFile[ \t]*[=:][ \t]*LOCAL[ \t]*\r?\n/m.exec(text);
  if (!last) return null;
  const header = text.slice(0, last.index + last[0].length);
  return /[^\t\r\n\x20-\x7e]/.test(header) ? null : header;
}

// What a volume part carries: [blob, file name]. Compressed in its own format where it pays: a .nii as
// .nii.gz, an uncompressed .mha as MHA with CompressedData = True (zlib); anything else as it is.
async function uploadable(file, name) {
  const suffix = IMAGE_SUFFIXES.find((end) => file.name.toLowerCase().endsWith(end)) || "";
  const plain = [file, `${name}${suffix}`]; // a neutral name: a file name can hold a patient's name
  if (!state.far || file.size < MIN_BYTES || typeof CompressionStream === "undefined") return plain;
  if (suffix === ".nii") {
    if (!(await deflatesWell(file))) return plain;
    setStatus(`compressing ${file.name}`);
    return [await squeezed(file, "gzip"), `${name}.nii.gz`];
  }
  if (suffix === ".mha") {
    const header = await mhaHeader(file);
    if (header === null || /^[ \t]*CompressedData[ \t]*[=:][ \t]*True/m.test(header)) return plain;
    const data = file.slice(header.length);
    if (!(await deflatesWell(data))) return plain;
    setStatus(`compressing ${file.name}`);
    const packed = await squeezed(data, "deflate");
    const lines = header.split(/\r?\n/).filter((line) => line && !/^[ \t]*CompressedData(Size)?[ \t]*[=:]/.test(line));
    const last = lines.pop(); // ElementDataFile = LOCAL stays the last line
    lines.push("CompressedData = True", `CompressedDataSize = ${packed.size}`, last, "");
    return [new Blob([lines.join("\n"), packed]), `${name}.mha`];
  }
  return plain;
}

function fileKey(file) {
  return `${file.name}\n${file.size}\n${file.lastModified}`;
}

// A volume's id on the server, uploading it once (POST /volumes) unless it is held already; null where it
// goes with the prediction instead (the store is full, or the server keeps none after all).
async function storedId(name, started) {
  const file = state.files[name];
  const held = state.stored[name];
  if (held && held.key === fileKey(file) && held.expires > performance.now()) return held.id;
  if (held && held.key !== fileKey(file)) forget(name); // another scan now: the server need not keep the old one
  const [blob, filename] = await uploadable(file, name);
  const body = new FormData();
  body.append("volume", blob, filename);
  const answer = await send("volumes", body, started, "uploading the volume");
  if (answer.status === 507 || answer.status === 404) return null;
  refuseOn(answer);
  const stored = JSON.parse(answer.text);
  state.stored[name] = { key: fileKey(file), id: String(stored.volume_id), ttl: Number(stored.expires_in) };
  keep(name, performance.now());
  return state.stored[name].id;
}

// DELETE /volumes/<id>: the page is done with a volume (another scan was chosen, or the page is closing).
function forget(name) {
  const held = state.stored[name];
  delete state.stored[name];
  if (held) fetch(new URL(`volumes/${held.id}`, base), { method: "DELETE", keepalive: true, headers: authorization() }).catch(() => {});
}

// The server's time to live restarts with each prediction that takes the volume; ours ends a little earlier.
function keep(name, since) {
  const held = state.stored[name];
  if (held) held.expires = since + 1000 * (held.ttl - Math.min(10, 0.05 * held.ttl));
}

function delayedId(items) {
  const [item] = items;
  return items.length === 1 && item.type === "DelayedResponse" ? String(item.request_id) : null;
}

// A server that answers later (--delayed, or Prefer: respond-async) is asked again at /responses until the
// result is there: the answer is then what /predict would have said.
async function collect(id, started) {
  const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  for (let pause = 100; ; pause = Math.min(1000, pause * 2)) {
    setStatus(`${elapsed(started)} (the server answers later)`);
    await wait(pause);
    const body = new FormData();
    body.append("request_id", id);
    const response = await fetch(new URL("responses", base), { method: "POST", body, headers: authorization() });
    const answer = { status: response.status, text: await response.text() };
    refuseOn(answer);
    const items = JSON.parse(answer.text);
    if (delayedId(items) === null) return items;
  }
}

function serverMessage(status, text) {
  try {
    const items = JSON.parse(text);
    if (Array.isArray(items) && items.length === 1 && items[0].label === "Error!") return String(items[0].content);
  } catch {
    // not JSON: say what the status says
  }
  return status >= 400 ? `the server answered HTTP ${status}` : null;
}

// ---- results ---------------------------------------------------------------------------------------------

function download(field, name, bytes, type = "application/octet-stream") {
  const url = URL.createObjectURL(new Blob([bytes], { type }));
  state.urls.push(url);
  const link = element("a", { href: url, download: name }, `download ${name}`);
  link.dataset.testid = `download-${field}`;
  return link;
}

const RESULTS = {
  async LabelVolume(item, field, box) {
    // labels: shown from 0.5 up, so the colour scale needs no pass over the voxels to find a range
    const image = await NVImage.new(unbase64(item.content).buffer, `${field}.mha`, "red", Number($("opacity").value), null, 0.5, 1);
    note("decoded");
    state.viewer.overlay(image);
    note("overlaid");
    state.overlays.push(image);
    $("opacity-control").hidden = false;
    const [nx, ny, nz] = image.hdr.dims.slice(1, 4);
    box.append(element("p", {}, `label volume, ${nx} x ${ny} x ${nz} voxels, shown in red over the input`));
    box.append(download(field, `${field}.nii.gz`, await image.saveToUint8Array(`${field}.nii.gz`), "application/gzip"));
  },
  async VTKMesh(item, field, box) {
    const bytes = unbase64(item.content);
    await state.viewer.mesh(bytes.buffer, `${field}.vtk`);
    box.append(element("p", {}, "mesh, shown in the 3D view"), download(field, `${field}.vtk`, bytes));
  },
  async Fiducials(item, field, box) {
    const points = item.content ? item.content.split(";").map((point) => point.split(",").map(Number)) : [];
    box.append(element("pre", {}, points.map((p) => p.join(", ")).join("\n") || "no points"));
    if (points.length && state.input) {
      state.viewer.points(points, field);
      box.append(element("p", {}, "shown in violet in the viewer"));
    }
    const json = JSON.stringify({ coordinateSystem: "LPS", points }, null, 2);
    box.append(download(field, `${field}.json`, new TextEncoder().encode(json), "application/json"));
  },
  async PlainText(item, field, box) {
    box.append(element("pre", {}, item.content));
  },
  async TransformGrid(item, field, box) {
    box.append(element("p", {}, "displacement field"), download(field, `${field}.nii.gz`, unbase64(item.content)));
  },
  async TransformBSpline(item, field, box) {
    box.append(element("p", {}, "B-spline transform"), download(field, `${field}.h5`, unbase64(item.content)));
  },
  async TransformLinear(item, field, box) {
    box.append(element("p", {}, "linear transform"), download(field, `${field}.mat`, unbase64(item.content)));
  },
};

async function showResults(items) {
  const results = $("results");
  results.replaceChildren();
  state.urls.forEach((url) => URL.revokeObjectURL(url));
  state.urls = [];
  state.viewer.clear(); // earlier results go, the input stays
  state.overlays = [];
  const outputs = state.info.output_interface;
  for (const [index, item] of items.entries()) {
    const field = outputs.length === items.length ? outputs[index].field : `${item.type}-${index}`;
    const box = element("div", { class: "result" });
    box.dataset.testid = `result-${field}`;
    const title = item.label || field;
    box.append(element("strong", {}, title));
    results.append(box);
    const show = RESULTS[item.type];
    if (show) await show(item, field, box);
    else box.append(element("p", {}, `an output of type ${item.type}, which this page cannot show`));
  }
}

// POST /predict, naming the volumes the server keeps; when it answers 404 unknown volume_id (the volume
// expired, the server restarted), they are uploaded again, once.
async function predict(started) {
  const volumes = state.info.input_interface.filter((spec) => spec.type === "volume").map((spec) => spec.destination);
  for (let attempt = 1; ; attempt++) {
    const references = {};
    for (const name of state.info.volume_store ? volumes : []) {
      if (!state.files[name]) continue; // buildRequest says what is missing
      const id = await storedId(name, started);
      if (id) references[name] = id;
    }
    const asked = performance.now();
    const answer = await send("predict", await buildRequest(references), started);
    const named = Object.keys(references);
    if (answer.status === 404 && named.length && attempt === 1 && /unknown volume_id/.test(serverMessage(404, answer.text))) {
      named.forEach((name) => delete state.stored[name]);
      continue;
    }
    if (answer.status < 400) named.forEach((name) => keep(name, asked));
    return answer;
  }
}

async function run() {
  const button = $("run");
  button.disabled = true;
  document.body.dataset.run = String(performance.now());
  delete document.body.dataset.done;
  const started = performance.now();
  try {
    const answer = await predict(started);
    refuseOn(answer);
    let items = JSON.parse(answer.text);
    const id = delayedId(items);
    if (id !== null) items = await collect(id, started);
    await showResults(items);
    setStatus(`${items.length} output(s) shown in ${((performance.now() - started) / 1000).toFixed(2)} s: done`);
    mark("done");
  } catch (error) {
    console.error(error.message || String(error)); // the server's words or ours: never a header or the token
    setStatus(error.message || String(error), true);
    if (error.status === 401) signInAgain(error.message);
  } finally {
    $("progress").hidden = true;
    button.disabled = signin.waiting !== null;
  }
}

// A 401 after signing in (the token revoked, expired or mistyped): the scan and settings stay; Run waits for a
// token again.
function signInAgain(message) {
  askForToken(message).then(() => {
    $("run").disabled = false;
    setStatus("signed in: Run again");
  });
}

// /info, with the token once one is needed: a closed /info answers 401, an open one says what is guarded.
async function loadInfo() {
  let asked = false; // once the user went on without a token, the server decides (a certificate, a network)
  for (;;) {
    const response = await fetch(new URL("info", base), { headers: authorization() });
    if (response.status === 401) {
      const message = serverMessage(401, await response.text());
      setStatus("sign in to use this service");
      if (token() === null) {
        $("signin-note").textContent = message; // "this service needs an identity: token ...": the methods
        await askForToken();
      } else {
        await askForToken(message); // the stored token was refused: revoked, expired or mistyped
      }
      asked = true;
      continue;
    }
    if (!response.ok) {
      $("signed-in").hidden = token() === null; // a token without the scope (403): another one is a sign-out away
      throw new Error(serverMessage(response.status, await response.text()));
    }
    const info = await response.json();
    const access = { methods: [], required: [], ...info.access };
    if (!asked && token() === null && access.required.includes("predict")) {
      setStatus("sign in to use this service");
      await askForToken("", access.methods);
      asked = true;
      continue; // again, with the token: every request carries it
    }
    $("signed-in").hidden = token() === null;
    return info;
  }
}

async function start() {
  const canvas = $("canvas");
  state.viewer = hasWebGL2() ? await new NiiVueViewer().attach(canvas) : new CanvasViewer().attach(canvas);
  document.body.dataset.viewer = state.viewer instanceof NiiVueViewer ? "niivue" : "canvas";
  setUpSignIn();
  state.info = await loadInfo();
  measureDistance();
  buildForm(state.info);
  $("opacity").addEventListener("input", () => state.viewer.opacity(Number($("opacity").value)));
  $("run").addEventListener("click", run);
  window.addEventListener("pagehide", () => Object.keys(state.stored).forEach(forget));
  $("run").disabled = false;
  setStatus("choose the inputs, then Run");
}

start().catch((error) => setStatus(error.message || String(error), true));
