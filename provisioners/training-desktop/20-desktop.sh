#!/bin/sh
# Training desktop: one attendee's XFCE desktop, served by TigerVNC on display :1 (port 5901) and
# logged in as the image user. The packages are declared in images.yml; this script wires them
# up. Everything per instance (VNC password, attendee number, shared-data mounts, the shutdown
# time if user-data changes it) is set at boot by 25-desktop-boot.py's program, never baked in.
set -eu
export DEBIAN_FRONTEND=noninteractive
user="$IMAGE_USER"
no_settings='{}'

# A screen locker or blanker crashes TigerVNC when it blanks the display; attendees never need one.
apt-get purge -y -q light-locker xfce4-screensaver xscreensaver > /dev/null 2>&1 || true

install -d -m 0755 /etc/imageforge /var/lib/imageforge/desktop
install -d -m 0700 /var/lib/imageforge/private
# images.yml's `desktop:` settings, the defaults that user-data may override at boot.
printf '%s\n' "${IMAGEFORGE_DESKTOP:-$no_settings}" > /etc/imageforge/desktop.json

# TigerVNC (Debian's tigervncserver@.service: tigervncsession starts the tigervncserver wrapper
# as the user of the display in vncserver.users): display :1 belongs to the image user. The
# security settings and the password file (TigerVNC 1.14+: ~/.config/tigervnc/passwd, no longer
# ~/.vnc/passwd) are written at boot; tigervncpasswd comes from tigervnc-tools, which the server
# only recommends (images.yml declares it).
printf ':1=%s\n' "$user" > /etc/tigervnc/vncserver.users
mkdir -p /etc/systemd/system/tigervncserver@.service.d
cat > /etc/systemd/system/tigervncserver@.service.d/imageforge.conf <<'UNIT'
[Unit]
# The password, security types and attendee number are set first.
After=imageforge-desktop.service
Requires=imageforge-desktop.service

[Service]
Restart=on-failure
RestartSec=2
UNIT

# XFCE defaults for every user: the attendee's background, no icons over it, the default panel
# without the first-start question, and no blanking or DPMS (which crash TigerVNC). xfdesktop
# names a monitor by its RandR output (Xtigervnc's is VNC-0; XFCE 4.20 too) and, in single
# workspace mode, takes every workspace's backdrop from workspace 0.
xfconf=/etc/xdg/xfce4/xfconf/xfce-perchannel-xml
mkdir -p "$xfconf"
if [ -f /etc/xdg/xfce4/panel/default.xml ]; then
    cp /etc/xdg/xfce4/panel/default.xml "$xfconf/xfce4-panel.xml"
fi
{
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo '<channel name="xfce4-desktop" version="1.0">'
    echo '  <property name="desktop-icons" type="empty">'
    echo '    <property name="style" type="int" value="0"/>'
    echo '  </property>'
    echo '  <property name="backdrop" type="empty">'
    echo '    <property name="single-workspace-mode" type="bool" value="true"/>'
    echo '    <property name="single-workspace-number" type="int" value="0"/>'
    echo '    <property name="screen0" type="empty">'
    for monitor in monitorVNC-0 monitor0 monitorscreen; do
        echo "      <property name=\"$monitor\" type=\"empty\">"
        for workspace in 0 1 2 3; do
            echo "        <property name=\"workspace$workspace\" type=\"empty\">"
            echo '          <property name="image-style" type="int" value="5"/>'
            echo '          <property name="last-image" type="string"'
            echo '                    value="/var/lib/imageforge/desktop/background.png"/>'
            echo '        </property>'
        done
        echo '      </property>'
    done
    echo '    </property>'
    echo '  </property>'
    echo '</channel>'
} > "$xfconf/xfce4-desktop.xml"
cat > "$xfconf/xfce4-power-manager.xml" <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<channel name="xfce4-power-manager" version="1.0">
  <property name="xfce4-power-manager" type="empty">
    <property name="dpms-enabled" type="bool" value="false"/>
    <property name="blank-on-ac" type="int" value="0"/>
    <property name="lock-screen-suspend-hibernate" type="bool" value="false"/>
  </property>
</channel>
XML
cat > /etc/xdg/autostart/imageforge-no-blanking.desktop <<'DESKTOP'
[Desktop Entry]
Type=Application
Name=No screen blanking (imageforge)
Comment=Blanking the display crashes TigerVNC
Exec=xset s off s noblank -dpms
NoDisplay=true
DESKTOP

# The attendee number in every interactive bash prompt (the number is written at boot).
cat > /etc/imageforge/attendee-prompt.sh <<'SH'
# imageforge: show the attendee number, set at boot from user-data or metadata, in the prompt.
if [ -n "${PS1-}" ] && [ -r /etc/imageforge/attendee ]; then
    case "$PS1" in
        *"[attendee "*) ;;
        *) PS1="[attendee $(cat /etc/imageforge/attendee)] $PS1" ;;
    esac
fi
SH
for rc in /etc/bash.bashrc /etc/skel/.bashrc "/home/$user/.bashrc" /root/.bashrc; do
    if [ -f "$rc" ] && ! grep -q attendee-prompt "$rc"; then
        printf '\n. /etc/imageforge/attendee-prompt.sh\n' >> "$rc"
    fi
done

# Auto-shutdown: every day at a local time. The timer is written at boot from the settings.
cat > /etc/systemd/system/imageforge-autoshutdown.service <<'UNIT'
[Unit]
Description=imageforge: the daily auto-shutdown of this training desktop

[Service]
Type=oneshot
ExecStart=/usr/bin/systemctl poweroff
UNIT
install -d /mnt/s3fs /mnt/autosquash
