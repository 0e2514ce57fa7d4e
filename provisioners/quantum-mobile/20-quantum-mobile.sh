#!/bin/sh
# Quantum Mobile: Python with AiiDA and JupyterLab in a virtual environment for the image user.
# PostgreSQL, RabbitMQ and the build tools are declared packages (images.yml).
set -eu
venv=/opt/quantum-mobile/venv
python3 -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir --quiet aiida-core jupyterlab
chown -R "$IMAGE_USER:$IMAGE_USER" /opt/quantum-mobile
