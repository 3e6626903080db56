"""A loopback RTSP PLAY server for the video tests: GStreamer's RTSP server (Debian's python3-gi,
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-rtsp, -plugins-ugly for x264enc), run by the SYSTEM python3
(``gi`` is not in the project's venv). Serves ``rtsp://127.0.0.1:PORT/test``: a moving ball, H.264.

usage: /usr/bin/python3 tests/rtsp_server.py PORT [WIDTH HEIGHT FPS]
Prints "ready" once listening; runs until killed.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main():
    port = sys.argv[1]
    width, height, fps = (sys.argv[2:5] + ["320", "240", "10"][len(sys.argv[2:5]) :])[:3]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},framerate={fps}/1 "
        "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! rtph264pay name=pay0 pt=96 )"
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        print("could not bind", flush=True)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
