#!/usr/bin/python3
"""GStreamer webrtcbin as the reference sender for campeer's latency benchmark.

Reads JSON lines on stdin ({"type": "offer", "sdp": ...} and {"type": "candidate",
"candidate": {...}}) and writes JSON lines on stdout ({"type": "answer", "sdp": ...} and
{"type": "candidate", "candidate": {...}}); benches/latency.rs relays them over campeer's
signaling. The video comes from the same shared-memory source and goes through the same x264
settings as campeer's, so only the WebRTC stacks differ.

Usage: webrtcbin_camera.py <shm socket path> <width> <height> <kbps>
"""
import json
import re
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

Gst.init(None)
SOCKET, WIDTH, HEIGHT, KBPS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
loop = GLib.MainLoop()
state = {"pipe": None, "webrtc": None}


def emit(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def h264_pt(sdp):
    """The payload type of the offer's constrained-baseline packetization-mode=1 H.264."""
    rtpmap = dict(re.findall(r"a=rtpmap:(\d+) (\S+)/90000", sdp))
    for pt, params in re.findall(r"a=fmtp:(\d+) (.*)", sdp):
        if rtpmap.get(pt, "").upper() == "H264" and "packetization-mode=1" in params and "42e01f" in params:
            return int(pt)
    raise SystemExit("offer has no 42e01f H.264")


def on_offer(sdp_text):
    if state["pipe"] is not None:
        state["pipe"].set_state(Gst.State.NULL)
    pt = h264_pt(sdp_text)
    desc = (
        f"shmsrc socket-path={SOCKET} is-live=true do-timestamp=true ! "
        f"video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate=30000/1001 ! "
        "queue max-size-buffers=2 max-size-time=0 max-size-bytes=0 leaky=downstream ! "
        f"x264enc tune=zerolatency speed-preset=ultrafast bitrate={KBPS} vbv-buf-capacity=500 "
        "key-int-max=60 bframes=0 b-adapt=false ! video/x-h264,profile=constrained-baseline ! "
        f"h264parse config-interval=-1 ! rtph264pay config-interval=-1 aggregate-mode=zero-latency pt={pt} ! "
        f"application/x-rtp,media=video,encoding-name=H264,payload={pt},clock-rate=90000 ! "
        "webrtcbin name=w bundle-policy=max-bundle latency=0"
    )
    pipe = Gst.parse_launch(desc)
    webrtc = pipe.get_by_name("w")
    state["pipe"], state["webrtc"] = pipe, webrtc

    def on_candidate(_w, mline, cand):
        emit({"type": "candidate", "candidate": {"candidate": cand, "sdpMLineIndex": mline}})

    webrtc.connect("on-ice-candidate", on_candidate)
    pipe.set_state(Gst.State.PLAYING)
    _, sdpmsg = GstSdp.SDPMessage.new_from_text(sdp_text)
    offer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.OFFER, sdpmsg)

    def on_answer(promise, _data):
        reply = promise.get_reply()
        answer = reply.get_value("answer")
        webrtc.emit("set-local-description", answer, Gst.Promise.new())
        emit({"type": "answer", "sdp": answer.sdp.as_text()})

    def on_remote_set(_promise, _data):
        # Retransmissions (NACK + RTX), as campeer and browsers do: without them every lost
        # packet costs a freeze until the next keyframe, which would make webrtcbin look worse
        # than it can be on a lossy link.
        i = 0
        while (t := webrtc.emit("get-transceiver", i)) is not None:
            t.set_property("do-nack", True)
            i += 1
        webrtc.emit("create-answer", None, Gst.Promise.new_with_change_func(on_answer, None))

    webrtc.emit("set-remote-description", offer, Gst.Promise.new_with_change_func(on_remote_set, None))


def handle(line):
    msg = json.loads(line)
    if msg["type"] == "offer":
        on_offer(msg["sdp"])
    elif msg["type"] == "candidate" and msg.get("candidate") and state["webrtc"] is not None:
        c = msg["candidate"]
        if c.get("candidate"):
            state["webrtc"].emit("add-ice-candidate", c.get("sdpMLineIndex") or 0, c["candidate"])
    return False


def reader():
    for line in sys.stdin:
        if line.strip():
            GLib.idle_add(handle, line)
    GLib.idle_add(loop.quit)


threading.Thread(target=reader, daemon=True).start()
emit({"type": "ready"})
loop.run()
if state["pipe"] is not None:
    state["pipe"].set_state(Gst.State.NULL)
