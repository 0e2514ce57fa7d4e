"""quantum-mobile: AiiDA and JupyterLab for the image user, with their services."""

VENV = "/opt/quantum-mobile/venv"


def test_aiida_and_jupyterlab_importable(host):
    result = host.run(f"{VENV}/bin/python -c 'import aiida, jupyterlab; print(aiida.__version__)'")
    assert result.rc == 0, result.stderr


def test_services_installed(host):
    for package in ("postgresql", "rabbitmq-server"):
        assert host.package(package).is_installed, package
