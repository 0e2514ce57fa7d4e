#!/bin/sh
# Training desktop: XFCE served by TigerVNC on display :1 for the attendee user. The VNC
# password is generated at first boot, never baked into the image.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends xfce4 xfce4-terminal dbus-x11 \
    tigervnc-standalone-server tigervnc-common
# A screen locker crashes TigerVNC when it blanks the display; attendees never need one.
apt-get purge -y -q light-locker xfce4-screensaver xscreensaver > /dev/null 2>&1 || true
