#!/bin/sh
# Training desktop: XFCE and TigerVNC are declared packages (images.yml). The VNC password is
# generated at first boot, never baked into the image.
set -eu
export DEBIAN_FRONTEND=noninteractive
# A screen locker crashes TigerVNC when it blanks the display; attendees never need one.
apt-get purge -y -q light-locker xfce4-screensaver xscreensaver > /dev/null 2>&1 || true
