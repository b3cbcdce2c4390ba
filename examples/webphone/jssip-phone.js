// The webphone with JsSIP 3.13: the same page and verbs as phone.js (SIP.js).
//
// JsSIP is published as CommonJS only; cjs.js runs it from node_modules without a
// bundler. `npm ci` in this directory is the only build step.

import { loadCommonJs } from "./cjs.js";
import { PhoneUi } from "./ui.js";

const ui = new PhoneUi("JsSIP");
const HINT = "Run `npm ci --prefix examples/webphone` in the siptrio clone, then reload this page.";

let JsSIP = null;
try {
  JsSIP = await loadCommonJs("./node_modules/", "jssip");
} catch (e) {
  ui.missingLibrary(e.message, HINT);
}

const CALL_OPTIONS = {
  mediaConstraints: { audio: true, video: false },
  pcConfig: { iceServers: [] }, // host candidates only: loopback or LAN
};

class JsSipPhone {
  constructor(ui, JsSIP) {
    this.ui = ui;
    this.JsSIP = JsSIP;
    this.ua = null;
    this.uaKey = null;
    this.session = null;
    this.lastPeerConnection = null;
  }

  // --- registration ---------------------------------------------------------------------

  async register(s) {
    if (!s.user) throw new Error("Enter a user name.");
    if (s.debug) {
      this.JsSIP.debug.enable("JsSIP:*");
      // the debug package remembers this in localStorage (and would log on every later
      // page of this origin): the page keeps nothing there
      try {
        window.localStorage.removeItem("debug");
      } catch (e) {
        // storage disabled: nothing was kept either
      }
    }
    const key = JSON.stringify([s.server, s.user, s.domain, s.authUser, s.password]);
    if (this.ua && this.uaKey !== key) {
      this.ua.stop();
      this.ua = null;
    }
    if (this.ua) {
      this.ui.setRegistration("registering");
      this.ua.register();
      return;
    }
    const socket = new this.JsSIP.WebSocketInterface(s.server);
    const ua = new this.JsSIP.UA({
      sockets: [socket],
      uri: `sip:${s.user}@${s.domain}`,
      display_name: s.user,
      // digest credentials: a stored user's password, or a credential's name and password
      authorization_user: s.password ? s.authUser || s.user : null,
      password: s.password || null,
      register: true, // on every (re)connection
      register_expires: 600,
    });
    this.ua = ua;
    this.uaKey = key;
    this.everConnected = false;
    ua.on("connected", () => {
      this.everConnected = true;
      this.ui.setRegistration("registering");
    });
    ua.on("disconnected", (e) => {
      if (ua !== this.ua) return;
      const why = this.everConnected ? "connection lost" : `cannot connect to ${s.server}`;
      this.ui.log(`WebSocket closed (code ${e && e.code}); JsSIP retries by itself`);
      this.ui.setRegistration("failed", `${why}; the browser console says why`);
    });
    ua.on("registered", () => this.ui.setRegistration("registered"));
    ua.on("unregistered", () => {
      if (this.ui.registration !== "failed") this.ui.setRegistration("unregistered");
    });
    ua.on("registrationFailed", (e) => {
      const r = e.response;
      if (r) this.ui.registrationRefused(r.status_code, r.reason_phrase);
      else this.ui.setRegistration("failed", e.cause);
    });
    ua.on("newRTCSession", (e) => this.newSession(e.session, e.originator));
    this.ui.setRegistration("registering", `connecting to ${s.server}`);
    ua.start();
  }

  async unregister() {
    if (!this.ua) return;
    this.ui.setRegistration("unregistering");
    this.ua.unregister();
  }

  // --- calls ------------------------------------------------------------------------------

  async call(target) {
    if (this.session) throw new Error("Already in a call.");
    this.ui.setCall("calling", { direction: "outgoing", peer: target });
    try {
      this.ua.call(target, CALL_OPTIONS); // newRTCSession fires from inside call()
    } catch (e) {
      this.session = null;
      this.ui.setCall("failed", { detail: e.message });
      throw e;
    }
  }

  newSession(session, originator) {
    if (this.session) {
      if (originator === "remote") session.terminate({ status_code: 486 }); // Busy Here
      return;
    }
    this.session = session;
    this.lastPeerConnection = null;
    const incoming = originator === "remote";
    const watch = (pc) => {
      this.lastPeerConnection = pc;
      pc.addEventListener("track", (ev) => this.ui.playRemote(ev.streams[0] || new MediaStream([ev.track])));
    };
    if (session.connection) watch(session.connection);
    session.on("peerconnection", (e) => watch(e.peerconnection));
    session.on("progress", (e) => {
      if (!incoming && e.response && e.response.status_code >= 180) this.ui.setCall("ringing");
    });
    session.on("accepted", () => this.ui.setCall("established", { answered: true }));
    session.on("confirmed", (e) => {
      // originator "remote": the ACK for our 200 arrived
      if (e.originator === "remote") this.ui.setCall("established", { acked: true, detail: "ACK received" });
    });
    session.on("ended", (e) => this.finish(session, "ended", e));
    session.on("failed", (e) => this.finish(session, "failed", e));
    if (incoming) {
      const from = session.remote_identity.uri.toString();
      this.ui.setCall("incoming", { direction: "incoming", peer: from });
    }
  }

  finish(session, how, e) {
    if (session !== this.session) return;
    this.session = null;
    const m = e.message;
    const status = m && m.status_code ? m.status_code : undefined;
    let state = how;
    let detail = e.cause;
    if (how === "failed" && (e.cause === this.JsSIP.C.causes.CANCELED || e.originator === "local")) {
      state = "ended"; // cancelled or declined: not a failure of the call
    }
    if (status) detail = `${status} ${m.reason_phrase}`;
    this.ui.setCall(state, { endedBy: e.originator, status, detail });
  }

  async answer() {
    if (!this.session || this.session.direction !== "incoming") return;
    this.ui.setCall("answering");
    this.session.answer(CALL_OPTIONS);
  }

  async hangup() {
    const session = this.session;
    if (!session) return;
    const ringingIn = session.direction === "incoming" && !session.isEstablished();
    session.terminate(ringingIn ? { status_code: 603 } : {}); // 603 Decline
  }

  peerConnection() {
    return (this.session && this.session.connection) || this.lastPeerConnection;
  }
}

if (JsSIP) ui.attach(new JsSipPhone(ui, JsSIP));
