// The webphone with SIP.js 0.21: register, call, answer, hang up, audio over WebRTC.
//
// SIP.js ships ES modules (node_modules/sip.js/lib), which the browser imports as they
// are: `npm ci` in this directory is the only build step.

import { PhoneUi } from "./ui.js";

const ui = new PhoneUi("SIP.js");
const HINT = "Run `npm ci --prefix examples/webphone` in the siptrio clone, then reload this page.";

let SIP = null;
try {
  SIP = await import("./node_modules/sip.js/lib/index.js");
} catch (e) {
  ui.missingLibrary(e.message, HINT);
}

const AUDIO_ONLY = { constraints: { audio: true, video: false } };

class SipJsPhone {
  constructor(ui, SIP) {
    this.ui = ui;
    this.SIP = SIP;
    this.ua = null;
    this.uaKey = null;
    this.registerer = null;
    this.session = null;
    this.lastPeerConnection = null;
  }

  // --- registration ---------------------------------------------------------------------

  async register(s) {
    const { UserAgent, Registerer, RegistererState } = this.SIP;
    if (!s.user) throw new Error("Enter a user name.");
    const key = JSON.stringify([s.server, s.user, s.domain, s.keepAliveInterval, s.authUser, s.password]);
    if (this.ua && this.uaKey !== key) await this.stop();
    if (!this.ua) {
      const uri = UserAgent.makeURI(`sip:${s.user}@${s.domain}`);
      if (!uri) throw new Error(`not a SIP address: sip:${s.user}@${s.domain}`);
      this.ua = new UserAgent({
        uri,
        displayName: s.user,
        // digest credentials: a stored user's password, or a credential's name and password
        authorizationUsername: s.password ? s.authUser || s.user : undefined,
        authorizationPassword: s.password || undefined,
        transportOptions: {
          server: s.server,
          keepAliveInterval: s.keepAliveInterval,
          traceSip: true, // every SIP message in the browser console
        },
        sessionDescriptionHandlerFactoryOptions: {
          // SIP.js would ask stun.l.google.com by default and wait for it; on a LAN or
          // on loopback the host candidates are all there is.
          peerConnectionConfiguration: { iceServers: [] },
          iceGatheringTimeout: 2000,
        },
        delegate: {
          onDisconnect: (error) => this.disconnected(error),
          onInvite: (invitation) => this.incoming(invitation),
        },
      });
      this.uaKey = key;
      this.registerer = new Registerer(this.ua, { expires: 600 });
      this.registerer.stateChange.addListener((state) => {
        if (state === RegistererState.Registered) this.ui.setRegistration("registered");
        else if (state === RegistererState.Unregistered && this.ui.registration === "registered") {
          this.ui.registrationEnded(); // not asked for: a refresh was refused
        } else if (state === RegistererState.Unregistered && this.ui.registration !== "failed") {
          this.ui.setRegistration("unregistered");
        }
      });
    }
    this.ui.setRegistration("registering", `connecting to ${s.server}`);
    try {
      if (!this.ua.isConnected()) {
        if (this.ua.state === this.SIP.UserAgentState.Started) await this.ua.reconnect();
        else await this.ua.start();
      }
    } catch (e) {
      this.ui.setRegistration("failed", `cannot connect to ${s.server}; the browser console says why`);
      throw e;
    }
    this.ui.setRegistration("registering");
    await this.registerer.register({
      requestDelegate: {
        onReject: (response) => {
          const m = response.message;
          this.ui.registrationRefused(m.statusCode, m.reasonPhrase);
        },
      },
    });
  }

  async unregister() {
    if (!this.registerer) return;
    this.ui.setRegistration("unregistering");
    await this.registerer.unregister();
  }

  disconnected(error) {
    if (!error) return;
    this.ui.log(`connection lost: ${error.message}`);
    if (this.ui.registration === "registered" || this.ui.registration === "registering") {
      this.ui.setRegistration("failed", "connection lost; the browser console says why");
    }
  }

  async stop() {
    const ua = this.ua;
    this.ua = null;
    this.registerer = null;
    if (ua) await ua.stop();
  }

  // --- calls ------------------------------------------------------------------------------

  async call(target) {
    const { UserAgent, Inviter } = this.SIP;
    if (this.session) throw new Error("Already in a call.");
    const uri = UserAgent.makeURI(target);
    if (!uri) throw new Error(`not a SIP address: ${target}`);
    const inviter = new Inviter(this.ua, uri, { sessionDescriptionHandlerOptions: AUDIO_ONLY });
    this.follow(inviter, "outgoing");
    this.ui.setCall("calling", { direction: "outgoing", peer: target });
    await inviter.invite({
      requestDelegate: {
        onProgress: (response) => {
          if (response.message.statusCode >= 180) this.ui.setCall("ringing");
        },
        onReject: (response) => {
          const m = response.message;
          if (this.ended) return; // our own CANCEL: its 487 is no failure
          this.ended = { state: "failed", status: m.statusCode, detail: `${m.statusCode} ${m.reasonPhrase}` };
        },
      },
    });
  }

  incoming(invitation) {
    if (this.session) {
      invitation.reject({ statusCode: 486 }); // Busy Here
      return;
    }
    this.follow(invitation, "incoming");
    this.ui.setCall("incoming", {
      direction: "incoming",
      peer: invitation.remoteIdentity.uri.toString(),
    });
  }

  async answer() {
    const session = this.session;
    if (!session || this.direction !== "incoming") return;
    this.ui.setCall("answering");
    await session.accept({ sessionDescriptionHandlerOptions: AUDIO_ONLY });
  }

  async hangup() {
    const { SessionState, Inviter } = this.SIP;
    const session = this.session;
    if (!session) return;
    this.ended = { state: "ended", endedBy: "local", detail: "hung up" };
    if (session.state === SessionState.Established) {
      await session.bye();
    } else if (session instanceof Inviter) {
      await session.cancel();
    } else {
      await session.reject({ statusCode: 603 }); // Decline
    }
  }

  peerConnection() {
    const sdh = this.session && this.session.sessionDescriptionHandler;
    return (sdh && sdh.peerConnection) || this.lastPeerConnection;
  }

  /** Show a session's progress until it ends. */
  follow(session, direction) {
    const { SessionState } = this.SIP;
    this.session = session;
    this.direction = direction;
    this.ended = null;
    this.lastPeerConnection = null;
    session.delegate = {
      onAck: () => this.ui.setCall("established", { acked: true, detail: "ACK received" }),
      onBye: (bye) => {
        this.ended = { state: "ended", endedBy: "remote", detail: "the other side hung up" };
        bye.accept();
      },
    };
    session.stateChange.addListener((state) => {
      if (session !== this.session) return;
      if (state === SessionState.Established) {
        const sdh = session.sessionDescriptionHandler;
        this.lastPeerConnection = sdh.peerConnection;
        this.ui.playRemote(sdh.remoteMediaStream);
        this.ui.setCall("established", { answered: true });
      } else if (state === SessionState.Terminated) {
        this.session = null;
        // SIP.js ends an Inviter before it hands the final response to onReject
        // (invite() above): report once that has run.
        queueMicrotask(() => {
          const end = this.ended || {
            state: "ended",
            endedBy: "remote",
            detail: direction === "incoming" && !this.lastPeerConnection ? "cancelled" : "ended",
          };
          this.ui.setCall(end.state, end);
        });
      }
    });
  }
}

if (SIP) ui.attach(new SipJsPhone(ui, SIP));
