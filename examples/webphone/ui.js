// The page both phones share: settings, buttons, state on screen, remote audio.
//
// A phone (phone.js for SIP.js, jssip-phone.js for JsSIP) implements five verbs:
// register(settings), unregister(), call(uri), answer(), hangup(); and reports back
// through setRegistration(), setCall() and playRemote(). Everything it reports is
// also kept in `window.phone` (state and an event list) for the interop tests.
//
// Settings come from the form; the query string fills it in:
//   ?user=alice&domain=example.com&server=ws://127.0.0.1:8080&target=bob
//   &register=1 (register on load)  &keepalive=SECONDS (SIP.js CRLF keep-alive)
//   &debug=1 (JsSIP's own debug log in the console)
// but never the password: a URL ends up in the history and in server logs.
//
// Credentials live in the form's fields and nowhere else: nothing is written to
// localStorage, sessionStorage or cookies, where every script of this origin could
// read them long after the tab is closed. "Get a credential" asks POST /credentials
// of the server the page came from (siptrio's admin server, when it has no [admin]
// token: for trying things locally); a web app's page gets its credential from its
// own backend instead and hands it to window.phone.useCredential(credential).

const $ = (id) => document.getElementById(id);

export const DEFAULT_DOMAIN = "example.com";

/** ws://<this page's host>:8080, or wss://...:8443 when the page came over https. */
export function defaultServer(loc = window.location) {
  const host = loc.hostname || "127.0.0.1";
  return loc.protocol === "https:" ? `wss://${host}:8443` : `ws://${host}:8080`;
}

/** "bob" -> sip:bob@<domain>; "bob@host" -> sip:bob@host; sip:/sips: URIs as given. */
export function targetUri(text, domain) {
  const t = text.trim();
  if (/^sips?:/i.test(t)) return t;
  if (t.includes("@")) return `sip:${t}`;
  return `sip:${t}@${domain}`;
}

const ACTIVE = new Set(["calling", "ringing", "incoming", "answering", "established"]);

export class PhoneUi {
  constructor(library) {
    this.library = library;
    this.params = new URLSearchParams(window.location.search);
    this.phone = null;
    this.registration = "unregistered";
    this.callState = "idle";
    // What the tests read: window.phone.registration, .call, .events ...
    this.exposed = {
      library,
      ready: false,
      registration: "unregistered",
      call: { state: "idle" },
      events: [],
      peerConnection: () => (this.phone ? this.phone.peerConnection() : null),
      useCredential: (credential) => this.useCredential(credential),
      credential: null, // { username, expires, capped } of the last credential used
      failure: null, // { status, reason, kind } of the last refused REGISTER
    };
    this.credential = null;
    window.phone = this.exposed;
    $("server").value = this.params.get("server") || defaultServer();
    $("user").value = this.params.get("user") || "";
    $("domain").value = this.params.get("domain") || DEFAULT_DOMAIN;
    $("target").value = this.params.get("target") || "";
  }

  /** The library did not load: say what to do instead of failing silently. */
  missingLibrary(error, hint) {
    this.notice(`${this.library} could not be loaded (${error}). ${hint}`);
    for (const b of document.querySelectorAll("button")) b.disabled = true;
    this.exposed.error = String(error);
    this.exposed.ready = true;
  }

  attach(phone) {
    this.phone = phone;
    $("account").addEventListener("submit", (e) => {
      e.preventDefault();
      this.exposed.failure = null;
      this.guard(() => this.phone.register(this.settings()));
    });
    $("unregister").addEventListener("click", () => this.guard(() => this.phone.unregister()));
    $("dial").addEventListener("submit", (e) => {
      e.preventDefault();
      const target = $("target").value;
      if (!target.trim()) {
        this.notice("Enter whom to call.");
        return;
      }
      this.guard(() => this.phone.call(targetUri(target, $("domain").value.trim())));
    });
    $("get-credential").addEventListener("click", () => this.guard(() => this.getCredential()));
    $("answer").addEventListener("click", () => this.guard(() => this.phone.answer()));
    $("hangup").addEventListener("click", () => this.guard(() => this.phone.hangup()));
    this.refreshButtons();
    this.exposed.ready = true;
    if (this.params.get("register") === "1") this.guard(() => this.phone.register(this.settings()));
  }

  settings() {
    const keepalive = Number(this.params.get("keepalive") || 0);
    return {
      server: $("server").value.trim(),
      user: $("user").value.trim(),
      domain: $("domain").value.trim() || DEFAULT_DOMAIN,
      authUser: $("auth-user").value.trim(),
      password: $("password").value,
      keepAliveInterval: Number.isFinite(keepalive) && keepalive > 0 ? keepalive : 0,
      debug: this.params.get("debug") === "1",
    };
  }

  async guard(action) {
    this.notice("");
    try {
      await action();
    } catch (e) {
      this.log(`error: ${e && e.message ? e.message : e}`);
      this.notice(String(e && e.message ? e.message : e));
    }
  }

  // --- credentials -----------------------------------------------------------------

  /** POST /credentials on this page's server, for the user in the form. */
  async getCredential() {
    const user = $("user").value.trim();
    if (!user) throw new Error("Enter a user name first: the credential is for that user.");
    const url = new URL("/credentials", window.location.href);
    let response;
    try {
      response = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ user }),
        cache: "no-store",
      });
    } catch (e) {
      throw new Error(`cannot reach ${url}: ${e.message}`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (response.status === 401) {
      throw new Error(
        "This server's admin API wants a bearer token ([admin] token is set), so this page " +
          "cannot get a credential by itself: a web app's backend asks POST /credentials and " +
          "hands the answer to its page. Or type the name and password in.",
      );
    }
    if (!response.ok || !body) {
      const why = body && body.error ? body.error : response.statusText;
      throw new Error(`POST /credentials: ${response.status} ${why}`);
    }
    this.useCredential(body);
  }

  /** Fill the form with a credential (the JSON of POST /credentials). */
  useCredential(credential) {
    $("auth-user").value = credential.username;
    $("password").value = credential.password;
    this.credential = { username: credential.username, expires: credential.expires };
    this.exposed.credential = { ...this.credential, capped: Boolean(credential.capped) };
    const until = new Date(credential.expires * 1000).toLocaleTimeString();
    const p = $("credential");
    p.textContent =
      `Credential ${credential.username}, good until ${until}` +
      (credential.capped && credential.message ? ` (${credential.message})` : "");
    p.hidden = false;
    this.notice("");
    this.log(`credential ${credential.username} until ${until}`);
  }

  credentialExpired() {
    return Boolean(this.credential) && Date.now() / 1000 > this.credential.expires;
  }

  // --- what the phone reports -------------------------------------------------------

  /** The server refused a REGISTER: say why in words a user can act on. */
  registrationRefused(status, reason) {
    let kind;
    let advice;
    if (/expired/i.test(reason) || ((status === 401 || status === 403) && this.credentialExpired())) {
      kind = "expired";
      advice = "The credential has expired: get a new one, then register again.";
    } else if (status === 401 || status === 407) {
      kind = "wrong-password";
      advice = $("password").value
        ? "Wrong name or password: the server did not accept them."
        : "The server wants a password: type one in, or get a credential.";
    } else if (status === 403) {
      kind = "forbidden";
      advice = `The server refused this registration: ${reason}.`;
    } else {
      kind = "failed";
      advice = `The server answered ${status} ${reason}.`;
    }
    this.exposed.failure = { status, reason, kind };
    this.setRegistration("failed", `${status} ${reason}`);
    this.notice(advice);
  }

  /** The registration ended without Unregister: a refresh was refused, most likely. */
  registrationEnded() {
    if (this.credentialExpired()) {
      this.exposed.failure = { status: 0, reason: "credential expired", kind: "expired" };
      this.setRegistration("failed", "the credential expired");
      this.notice("The credential has expired: get a new one, then register again.");
    } else {
      this.setRegistration("unregistered");
    }
  }

  setRegistration(state, detail = "") {
    this.registration = state;
    this.exposed.registration = state;
    this.record("registration", state, detail);
    const out = $("reg-state");
    out.dataset.state = state;
    out.textContent = detail ? `${state} (${detail})` : state;
    this.refreshButtons();
  }

  /** state: idle calling ringing incoming answering established ended failed. */
  setCall(state, info = {}) {
    this.callState = state;
    const call = state === "calling" || state === "incoming" ? {} : { ...this.exposed.call };
    Object.assign(call, info, { state });
    this.exposed.call = call;
    this.record("call", state, info.detail || "");
    const out = $("call-state");
    out.dataset.state = state;
    out.textContent = info.detail ? `${state} (${info.detail})` : state;
    if (info.peer !== undefined) $("call-peer").textContent = info.peer ? `with ${info.peer}` : "";
    if (!ACTIVE.has(state)) $("remote-audio").srcObject = null;
    this.refreshButtons();
  }

  /** The remote side's audio: any MediaStream, played by the <audio> element. */
  playRemote(stream) {
    const audio = $("remote-audio");
    audio.srcObject = stream;
    audio.play().catch((e) => this.log(`audio: ${e.message}`));
  }

  record(kind, state, detail) {
    this.exposed.events.push({ kind, state, detail, at: Date.now() });
    this.log(`${kind}: ${state}${detail ? ` (${detail})` : ""}`);
  }

  notice(text) {
    const p = $("notice");
    p.textContent = text;
    p.hidden = !text;
  }

  log(text) {
    const line = `${new Date().toISOString().slice(11, 23)} ${text}\n`;
    $("log").textContent += line;
    console.info(`[webphone] ${text}`);
  }

  refreshButtons() {
    const reg = this.registration;
    const call = this.callState;
    $("register").disabled = reg === "registered" || reg === "registering";
    $("unregister").disabled = reg !== "registered";
    $("call").disabled = reg !== "registered" || ACTIVE.has(call);
    $("answer").disabled = call !== "incoming";
    $("hangup").disabled = !ACTIVE.has(call);
  }
}
