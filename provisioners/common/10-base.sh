#!/bin/sh
# Common to every flavor: the image's default user and what the image knows about itself.
# Packages are declared in images.yml (`packages:`), not installed here.
set -eu
if ! id "$IMAGE_USER" > /dev/null 2>&1; then
    useradd --create-home --shell /bin/bash --comment "imageforge default user" "$IMAGE_USER"
fi
echo "$IMAGE_USER ALL=(ALL) NOPASSWD:ALL" > "/etc/sudoers.d/90-$IMAGE_USER"
chmod 0440 "/etc/sudoers.d/90-$IMAGE_USER"
passwd --lock "$IMAGE_USER" > /dev/null

mkdir -p /etc/imageforge
cat > /etc/imageforge/image.env <<EOT
IMAGEFORGE_FLAVOR=$IMAGEFORGE_FLAVOR
IMAGEFORGE_CLOUD=$IMAGEFORGE_CLOUD
IMAGE_USER=$IMAGE_USER
IMAGE_PORTS="$IMAGE_PORTS"
EOT
