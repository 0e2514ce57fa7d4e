"""training-desktop: XFCE and TigerVNC, with no screen locker and no baked VNC password."""


def test_desktop_packages(host):
    for package in ("xfce4", "tigervnc-standalone-server"):
        assert host.package(package).is_installed, package


def test_no_screen_locker(host):
    for package in ("light-locker", "xfce4-screensaver", "xscreensaver"):
        assert not host.package(package).is_installed, package


def test_no_vnc_password_in_image(host):
    result = host.run("find /home /root /etc -name passwd -path '*vnc*'")
    assert result.stdout.strip() == ""
