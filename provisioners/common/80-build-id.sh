#!/bin/sh
# Runs in every build after the flavor's steps, never from the step cache: the one thing a
# build writes into the image that differs from build to build is which build it is.
set -eu
install -d -m 0755 /etc/imageforge
touch /etc/imageforge/image.env
sed -i '/^IMAGEFORGE_BUILD_ID=/d' /etc/imageforge/image.env
echo "IMAGEFORGE_BUILD_ID=$IMAGEFORGE_BUILD_ID" >> /etc/imageforge/image.env
chmod 0644 /etc/imageforge/image.env
