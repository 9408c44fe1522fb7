#!/usr/bin/python3
"""A third-party WHIP/WHEP test client built on GStreamer's webrtcbin.

Run it with Debian's /usr/bin/python3 (it needs python3-gi, gir1.2-gst-plugins-bad-1.0 and the
GStreamer 1.22 plugins: base, good, bad, ugly, libav, nice).

    gst_webrtc.py publish   --url http://H:P/whip/ROOM --token T --video h264|vp8 [--audio]
                            [--seconds N] [--h264-profile constrained-baseline|baseline|high]
                            [--key-int FRAMES] [--bitrate KBITS] [--mtu BYTES] [--pattern P]
    gst_webrtc.py subscribe --url http://H:P/whep/ROOM --token T [--seconds N]
                            [--video-codecs h264,vp8] [--audio]

It prints one JSON object per line on stdout:
    {"event":"offer","sdp":...}                       once, the offer as POSTed
    {"event":"answer","status":201,"location":...,"sdp":...}
    {"event":"state","what":"ice"|"pc","state":...}   state changes (diagnostics)
    {"event":"connected"}                             the peer connection is connected
    {"event":"stats","t":secs,"frames":n,"audio_buffers":n}   every second (subscribe)
    {"event":"stats","t":secs,"sent_frames":n,"audio_buffers":n}  every second (publish)
    {"event":"error","status":http_status_or_null,"body":...}
    {"event":"deleted","status":code}                 after --seconds of connected media
Exit codes: 0 done (whatever the DELETE answered), 2 pipeline or SDP error or the connection
lost after connecting, 3 HTTP error (a status other than 201, or no connection), 4 not connected
within 15 s (or ICE failed before connecting), 5 hard time limit.

It does nothing for keepalive beyond what webrtcbin and libnice do by default: after the ICE
connectivity checks libnice sends no further STUN binding requests to an ICE-lite peer.
"""

import argparse
import ctypes
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

CONNECT_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 10.0
GATHER_TIMEOUT_S = 3.0

VIDEO_PT_VP8 = 96
VIDEO_PT_H264 = 102
AUDIO_PT_OPUS = 111

# The H.264 formats a subscriber offers, one payload type each (as browsers do): constrained
# baseline, baseline, main and high, all packetization-mode 1 at level 3.1.
SUBSCRIBE_H264_PROFILES = ["42e01f", "42001f", "4d001f", "64001f"]

def local_address_towards(url):
    """The local IP address the kernel would send from to the URL's host."""
    host = urllib.parse.urlsplit(url).hostname or "127.0.0.1"
    family, _t, _p, _c, sa = socket.getaddrinfo(host, 9, 0, socket.SOCK_DGRAM)[0]
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.connect(sa[:2])
        return s.getsockname()[0]
    finally:
        s.close()


def pin_ice_address(webrtc, address):
    """Makes webrtcbin's libnice agent gather on `address` only.

    libnice skips loopback interfaces when it enumerates them, and pins every host candidate's
    socket to its interface (IP_UNICAST_IF): from 192.0.2.2 on eth0 its checks to an ICE-lite
    server at 127.0.0.1 leave by eth0 and never arrive. Giving the agent the one address that
    reaches the server (127.0.0.1 for a local server) is what a host with several interfaces
    does anyway. GStreamer 1.22 has no API for it and Debian ships no Nice typelib by default,
    so this goes through ctypes: webrtcbin's ice-agent -> its NiceAgent -> add_local_address.
    """
    ptr_size = ctypes.sizeof(ctypes.c_void_p)
    # A PyGObject wrapper is PyObject_HEAD followed by the GObject pointer.
    webrtc_ptr = ctypes.c_void_p.from_address(id(webrtc) + 2 * ptr_size).value
    go = ctypes.CDLL("libgobject-2.0.so.0")
    go.g_object_get.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    go.g_object_unref.argtypes = [ctypes.c_void_p]
    go.g_type_name_from_instance.restype = ctypes.c_char_p
    go.g_type_name_from_instance.argtypes = [ctypes.c_void_p]
    if go.g_type_name_from_instance(webrtc_ptr) != b"GstWebRTCBin":
        raise RuntimeError("cannot reach webrtcbin's GObject")
    ice = ctypes.c_void_p()
    go.g_object_get(webrtc_ptr, b"ice-agent", ctypes.byref(ice), None)
    agent = ctypes.c_void_p()
    go.g_object_get(ice, b"agent", ctypes.byref(agent), None)
    try:
        if go.g_type_name_from_instance(agent) != b"NiceAgent":
            raise RuntimeError("webrtcbin's ICE agent is not libnice")
        nice = ctypes.CDLL("libnice.so.10")
        nice.nice_address_new.restype = ctypes.c_void_p
        nice.nice_address_set_from_string.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        nice.nice_agent_add_local_address.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        nice.nice_address_free.argtypes = [ctypes.c_void_p]
        addr = nice.nice_address_new()
        try:
            if not nice.nice_address_set_from_string(addr, address.encode()):
                raise RuntimeError("libnice cannot read the address %s" % address)
            if not nice.nice_agent_add_local_address(agent, addr):
                raise RuntimeError("libnice refused the local address %s" % address)
        finally:
            nice.nice_address_free(addr)
    finally:
        go.g_object_unref(agent)
        go.g_object_unref(ice)


_out_lock = threading.Lock()
T0 = time.monotonic()


def emit(obj):
    line = json.dumps(obj, separators=(",", ":"))
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def log(msg):
    with _out_lock:
        sys.stderr.write("[gst_webrtc %.3f] %s\n" % (time.monotonic() - T0, msg))
        sys.stderr.flush()


def hard_exit(code):
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


class Client:
    def __init__(self, args):
        self.args = args
        self.mode = args.mode
        self.loop = GLib.MainLoop()
        self.pipe = Gst.Pipeline.new("client")
        self.webrtc = None
        self.location = None
        self.offer_sent = False
        self.connected = False
        self.connected_at = None
        self.finishing = False
        self.exit_code = 0
        self.frames = 0  # subscribe: decoded video frames; publish: encoded video frames
        self.audio_buffers = 0  # subscribe: decoded audio buffers; publish: encoded audio
        self.counter_lock = threading.Lock()
        self.pending_caps = 0  # publish: webrtcbin sink pads still waiting for caps
        self.last_states = {}

    # ---------------------------------------------------------------- pipeline

    def make(self, factory, name=None, **props):
        el = Gst.ElementFactory.make(factory, name)
        if el is None:
            self.fail_pipeline("missing GStreamer element %s" % factory)
        for k, v in props.items():
            el.set_property(k.replace("_", "-"), v)
        self.pipe.add(el)
        return el

    def link_chain(self, *els):
        for a, b in zip(els, els[1:]):
            if not a.link(b):
                self.fail_pipeline("cannot link %s to %s" % (a.get_name(), b.get_name()))

    def build(self):
        self.webrtc = self.make("webrtcbin", "webrtc", bundle_policy=GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        # No STUN or TURN server: host candidates only, on the address that reaches the server.
        try:
            local = local_address_towards(self.args.url)
            pin_ice_address(self.webrtc, local)
            log("ICE gathers on %s" % local)
        except Exception as e:  # noqa: BLE001
            self.fail_pipeline("cannot choose the ICE address: %s" % e)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering_state)
        self.webrtc.connect("notify::ice-connection-state", self.on_ice_state)
        self.webrtc.connect("notify::connection-state", self.on_pc_state)
        if self.mode == "publish":
            self.build_publish()
        else:
            self.build_subscribe()
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self.on_bus)

    def request_sink_pad(self):
        tmpl = self.webrtc.get_pad_template("sink_%u")
        pad = self.webrtc.request_pad(tmpl, None, None)
        if pad is None:
            self.fail_pipeline("webrtcbin gave no sink pad")
        return pad

    def attach_sender(self, payloader):
        pad = self.request_sink_pad()
        if payloader.get_static_pad("src").link(pad) != Gst.PadLinkReturn.OK:
            self.fail_pipeline("cannot link %s to webrtcbin" % payloader.get_name())
        trans = pad.get_property("transceiver")
        trans.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        self.pending_caps += 1
        payloader.get_static_pad("src").add_probe(
            Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, self.on_first_buffer, None
        )

    def count_probe(self, pad, kind):
        def probe(_pad, info, _data):
            with self.counter_lock:
                if kind == "video":
                    self.frames += 1
                else:
                    self.audio_buffers += 1
            return Gst.PadProbeReturn.OK

        pad.add_probe(Gst.PadProbeType.BUFFER, probe, None)

    def build_publish(self):
        a = self.args
        src = self.make("videotestsrc", "vsrc", is_live=True, pattern=a.pattern)
        conv = self.make("videoconvert", "vconv")
        raw = self.make("capsfilter", "vraw")
        raw.set_property("caps", Gst.Caps.from_string("video/x-raw,width=640,height=360,framerate=30/1,format=I420"))
        q = self.make("queue", "vq", max_size_buffers=2, leaky=2)
        if a.video == "h264":
            enc = self.make(
                "x264enc", "venc", tune="zerolatency", speed_preset="ultrafast", key_int_max=a.key_int, bitrate=a.bitrate
            )
            if a.h264_profile == "high":
                # ultrafast turns off every High tool and x264 then writes a Constrained Baseline
                # SPS whatever the caps say; CABAC and the 8x8 transform make it a real High stream.
                enc.set_property("cabac", True)
                enc.set_property("dct8x8", True)
            ecaps = self.make("capsfilter", "vencaps")
            ecaps.set_property(
                "caps",
                Gst.Caps.from_string(
                    "video/x-h264,profile=%s,stream-format=byte-stream,alignment=au" % a.h264_profile
                ),
            )
            pay = self.make(
                "rtph264pay", "vpay", config_interval=-1, pt=VIDEO_PT_H264, aggregate_mode="zero-latency", mtu=a.mtu
            )
            self.link_chain(src, conv, raw, q, enc, ecaps, pay)
            self.count_probe(ecaps.get_static_pad("src"), "video")
        else:
            enc = self.make(
                "vp8enc", "venc", deadline=1, target_bitrate=a.bitrate * 1000, keyframe_max_dist=a.key_int
            )
            pay = self.make("rtpvp8pay", "vpay", pt=VIDEO_PT_VP8, mtu=a.mtu)
            self.link_chain(src, conv, raw, q, enc, pay)
            self.count_probe(enc.get_static_pad("src"), "video")
        self.attach_sender(pay)
        if a.audio:
            asrc = self.make("audiotestsrc", "asrc", is_live=True, wave="sine", volume=0.2)
            aconv = self.make("audioconvert", "aconv")
            ares = self.make("audioresample", "ares")
            aq = self.make("queue", "aq")
            aenc = self.make("opusenc", "aenc")
            apay = self.make("rtpopuspay", "apay", pt=AUDIO_PT_OPUS)
            self.link_chain(asrc, aconv, ares, aq, aenc, apay)
            self.count_probe(aenc.get_static_pad("src"), "audio")
            self.attach_sender(apay)

    def build_subscribe(self):
        a = self.args
        codecs = [c.strip().lower() for c in (a.video_codecs or "").split(",") if c.strip()]
        codecs = [c for c in codecs if c != "none"]
        structs = []
        for c in codecs:
            if c == "h264":
                for i, plid in enumerate(SUBSCRIBE_H264_PROFILES):
                    structs.append(
                        "application/x-rtp,media=video,encoding-name=H264,payload=%d,clock-rate=90000,"
                        "packetization-mode=(string)1,level-asymmetry-allowed=(string)1,"
                        "profile-level-id=(string)%s" % (VIDEO_PT_H264 + 2 * i, plid)
                    )
            elif c == "vp8":
                structs.append(
                    "application/x-rtp,media=video,encoding-name=VP8,payload=%d,clock-rate=90000" % VIDEO_PT_VP8
                )
            else:
                self.fail_pipeline("unknown video codec %r (h264, vp8)" % c)
        recv = GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY
        if structs:
            self.webrtc.emit("add-transceiver", recv, Gst.Caps.from_string(";".join(structs)))
        if a.audio:
            self.webrtc.emit(
                "add-transceiver",
                recv,
                Gst.Caps.from_string(
                    "application/x-rtp,media=audio,encoding-name=OPUS,payload=%d,clock-rate=48000,"
                    "encoding-params=(string)2" % AUDIO_PT_OPUS
                ),
            )
        if not structs and not a.audio:
            self.fail_pipeline("nothing to receive: no video codec and no --audio")
        self.webrtc.connect("pad-added", self.on_incoming_pad)

    def on_incoming_pad(self, _webrtc, pad):
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps() or pad.query_caps(None)
        log("incoming pad %s caps %s" % (pad.get_name(), caps.to_string() if caps else None))
        dec = Gst.ElementFactory.make("decodebin")
        dec.connect("pad-added", self.on_decoded_pad)
        self.pipe.add(dec)
        dec.sync_state_with_parent()
        if pad.link(dec.get_static_pad("sink")) != Gst.PadLinkReturn.OK:
            self.fail_pipeline("cannot link %s to decodebin" % pad.get_name())

    def on_decoded_pad(self, _dec, pad):
        caps = pad.get_current_caps() or pad.query_caps(None)
        name = caps.get_structure(0).get_name() if caps and caps.get_size() else ""
        log("decoded pad caps %s" % (caps.to_string() if caps else None))
        kind = "video" if name.startswith("video/") else "audio"
        q = Gst.ElementFactory.make("queue")
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("sync", False)
        sink.set_property("async", False)
        self.pipe.add(q)
        self.pipe.add(sink)
        q.link(sink)
        sink.sync_state_with_parent()
        q.sync_state_with_parent()
        self.count_probe(sink.get_static_pad("sink"), kind)
        if pad.link(q.get_static_pad("sink")) != Gst.PadLinkReturn.OK:
            self.fail_pipeline("cannot link decoded %s pad" % kind)

    # ---------------------------------------------------------------- negotiation

    def on_first_buffer(self, pad, _info, _data):
        # The offer is made once every sending pad has carried a buffer: by then the payloaders
        # have set their final caps (rtph264pay adds sprop-parameter-sets after the first SPS).
        caps = pad.get_current_caps()
        log("first buffer on %s: %s" % (pad.get_name(), caps.to_string() if caps else None))
        self.pending_caps -= 1
        if self.pending_caps == 0:
            GLib.idle_add(self.create_offer)
        return Gst.PadProbeReturn.REMOVE

    def create_offer(self):
        promise = Gst.Promise.new_with_change_func(self.on_offer_created, None, None)
        self.webrtc.emit("create-offer", None, promise)
        return False

    def on_offer_created(self, promise, _a, _b):
        promise.wait()
        reply = promise.get_reply()
        if reply is None or not reply.has_field("offer"):
            GLib.idle_add(self.fail_pipeline, "create-offer failed: %s" % (reply.to_string() if reply else None))
            return
        offer = reply.get_value("offer")
        p = Gst.Promise.new()
        self.webrtc.emit("set-local-description", offer, p)
        p.interrupt()
        # Host candidates only: gathering completes quickly; post whatever we have after a while
        # if webrtcbin never says "complete".
        GLib.timeout_add(int(GATHER_TIMEOUT_S * 1000), self.post_offer)

    def on_gathering_state(self, el, _pspec):
        st = el.get_property("ice-gathering-state")
        self.note_state("gathering", st)
        if st == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(self.post_offer)

    def post_offer(self):
        if self.offer_sent:
            return False
        desc = self.webrtc.get_property("local-description")
        if desc is None:
            return False
        self.offer_sent = True
        sdp = desc.sdp.as_text()
        emit({"event": "offer", "sdp": sdp})
        threading.Thread(target=self.whip_post, args=(sdp,), daemon=True).start()
        return False

    def http(self, method, url, body=None, ctype=None):
        req = urllib.request.Request(url, data=body, method=method)
        req.add_header("Authorization", "Bearer " + self.args.token)
        if ctype:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
                return r.status, dict(r.headers.items()), r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            try:
                text = e.read().decode("utf-8", "replace")
            except Exception:  # noqa: BLE001
                text = ""
            return e.code, dict(e.headers.items()) if e.headers else {}, text

    def whip_post(self, sdp):
        try:
            status, headers, body = self.http("POST", self.args.url, sdp.encode(), "application/sdp")
        except Exception as e:  # noqa: BLE001 - connection refused, timeout, ...
            emit({"event": "error", "status": None, "body": "%s: %s" % (type(e).__name__, e)})
            hard_exit(3)
        if status != 201:
            emit({"event": "error", "status": status, "body": body})
            hard_exit(3)
        loc = {k.lower(): v for k, v in headers.items()}.get("location")
        if loc:
            self.location = urllib.parse.urljoin(self.args.url, loc)
        emit({"event": "answer", "status": status, "location": self.location, "sdp": body})
        GLib.idle_add(self.set_answer, body)

    def set_answer(self, text):
        res, msg = GstSdp.SDPMessage.new_from_text(text)
        if res != GstSdp.SDPResult.OK:
            self.fail_pipeline("cannot parse the answer SDP (%s)" % res)
            return False
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        promise = Gst.Promise.new_with_change_func(self.on_answer_set, None, None)
        self.webrtc.emit("set-remote-description", answer, promise)
        return False

    def on_answer_set(self, promise, _a, _b):
        promise.wait()
        reply = promise.get_reply()
        if reply is not None and reply.has_field("error"):
            err = reply.get_value("error")
            GLib.idle_add(self.fail_pipeline, "set-remote-description: %s" % (err.message if err else reply.to_string()))

    # ---------------------------------------------------------------- states

    def note_state(self, what, st):
        name = st.value_nick if hasattr(st, "value_nick") else str(st)
        if self.last_states.get(what) != name:
            self.last_states[what] = name
            emit({"event": "state", "what": what, "state": name})

    def on_ice_state(self, el, _pspec):
        st = el.get_property("ice-connection-state")
        self.note_state("ice", st)
        if st == GstWebRTC.WebRTCICEConnectionState.FAILED:
            GLib.idle_add(self.fail_connection, "ICE failed")

    def on_pc_state(self, el, _pspec):
        st = el.get_property("connection-state")
        self.note_state("pc", st)
        if st == GstWebRTC.WebRTCPeerConnectionState.CONNECTED and not self.connected:
            self.connected = True
            self.connected_at = time.monotonic()
            emit({"event": "connected"})
            GLib.timeout_add(int(self.args.seconds * 1000), self.finish)
        elif st == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            GLib.idle_add(self.fail_connection, "peer connection failed")

    def on_bus(self, _bus, msg):
        if msg.type == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            self.fail_pipeline("%s: %s (%s)" % (msg.src.get_name() if msg.src else "?", err.message, dbg))
        elif msg.type == Gst.MessageType.WARNING:
            err, dbg = msg.parse_warning()
            log("warning from %s: %s (%s)" % (msg.src.get_name() if msg.src else "?", err.message, dbg))
        elif msg.type == Gst.MessageType.EOS:
            self.fail_pipeline("unexpected end of stream")

    # ---------------------------------------------------------------- ticks and the end

    def tick(self):
        with self.counter_lock:
            f, a = self.frames, self.audio_buffers
        t = round(time.monotonic() - T0, 3)
        if self.mode == "subscribe":
            emit({"event": "stats", "t": t, "frames": f, "audio_buffers": a})
        else:
            emit({"event": "stats", "t": t, "sent_frames": f, "audio_buffers": a})
        return True

    def watchdog(self):
        if not self.connected and not self.finishing:
            emit({"event": "error", "status": None, "body": "not connected within %g s" % CONNECT_TIMEOUT_S})
            self.shutdown(4)
        return False

    def fail_connection(self, text):
        # Never connected: the same outcome as the watchdog (4). Lost after connecting: 2.
        if self.finishing:
            return False
        emit({"event": "error", "status": None, "body": text})
        self.shutdown(2 if self.connected else 4)
        return False

    def fail_pipeline(self, text):
        if self.finishing:
            return False
        emit({"event": "error", "status": None, "body": text})
        self.shutdown(2)
        return False

    def finish(self):
        if self.finishing:
            return False
        self.tick()
        if self.location:
            try:
                status, _h, _b = self.http("DELETE", self.location)
            except Exception as e:  # noqa: BLE001
                emit({"event": "error", "status": None, "body": "DELETE: %s: %s" % (type(e).__name__, e)})
                status = None
            emit({"event": "deleted", "status": status})
        self.shutdown(0)
        return False

    def shutdown(self, code):
        self.finishing = True
        self.exit_code = code
        # Setting a webrtcbin pipeline to NULL can block; never let it hang the process.
        threading.Timer(3.0, hard_exit, args=(code,)).start()
        try:
            self.pipe.set_state(Gst.State.NULL)
        finally:
            hard_exit(code)

    def run(self):
        self.build()
        if self.pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            self.fail_pipeline("pipeline would not start")
        if self.mode == "subscribe":
            # No sending pads to wait for: offer at once.
            GLib.idle_add(self.create_offer)
        GLib.timeout_add(1000, self.tick)
        GLib.timeout_add(int(CONNECT_TIMEOUT_S * 1000), self.watchdog)
        self.loop.run()
        hard_exit(self.exit_code)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    pub = sub.add_parser("publish", help="WHIP publisher")
    pub.add_argument("--url", required=True)
    pub.add_argument("--token", required=True)
    pub.add_argument("--video", choices=["h264", "vp8"], required=True)
    pub.add_argument("--audio", action="store_true")
    pub.add_argument("--seconds", type=float, default=10.0)
    pub.add_argument(
        "--h264-profile", choices=["constrained-baseline", "baseline", "high"], default="constrained-baseline"
    )
    pub.add_argument("--key-int", type=int, default=60, help="frames between keyframes")
    pub.add_argument("--bitrate", type=int, default=1000, help="video bitrate, kbit/s")
    pub.add_argument("--mtu", type=int, default=1200, help="largest RTP packet the payloader makes")
    pub.add_argument("--pattern", default="ball", help="videotestsrc pattern (snow: large pictures)")
    s = sub.add_parser("subscribe", help="WHEP viewer")
    s.add_argument("--url", required=True)
    s.add_argument("--token", required=True)
    s.add_argument("--seconds", type=float, default=10.0)
    s.add_argument("--video-codecs", default="h264,vp8")
    s.add_argument("--audio", action="store_true")
    args = p.parse_args()

    Gst.init(None)
    # Whatever happens, the process ends: connect timeout + media time + DELETE + teardown.
    limit = CONNECT_TIMEOUT_S + args.seconds + HTTP_TIMEOUT_S + 10.0
    t = threading.Timer(limit, lambda: (emit({"event": "error", "status": None, "body": "hard time limit"}), hard_exit(5)))
    t.daemon = True
    t.start()
    Client(args).run()


if __name__ == "__main__":
    main()
