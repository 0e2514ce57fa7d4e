#!/bin/sh
# Quantum Mobile: Python with AiiDA and JupyterLab in a virtual environment for the image user,
# plus the PostgreSQL and RabbitMQ services AiiDA needs.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends python3-venv python3-dev build-essential \
    postgresql rabbitmq-server git
venv=/opt/quantum-mobile/venv
python3 -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir --quiet aiida-core jupyterlab
chown -R "$IMAGE_USER:$IMAGE_USER" /opt/quantum-mobile
