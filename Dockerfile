# The tomaat image. One image runs every part of deploy/kubernetes/: the front end (`tomaat serve`), the
# registry (`tomaat-registry serve`) and the Ray head and GPU worker pods, whose Serve replicas import
# tomaat.server.ray_runner and the app. Ray Client (`--ray ray://...`) needs the same Ray and Python on both
# ends, so the front end and the Ray pods must run the same image.
#
#   docker build -t registry.example.org/tomaat:0.2.0 .
#   docker build --build-arg EXTRAS=ray,postgres,torch -t registry.example.org/tomaat:0.2.0-torch .   # an app's framework
#
# Not built in this repository's CI (no container engine there); tests/test_deploy.py checks this file's
# structure offline. Pin the base image by digest too (FROM python:...@sha256:...) once you build it.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---- build: tomaat and its dependencies into a virtual environment ------------------------------------------
FROM ${PYTHON_IMAGE} AS build
# ray,postgres: Ray Serve replicas, and the registry's PostgreSQL driver (both wheels: nothing compiled here).
ARG EXTRAS=ray,postgres
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Only what the package is built from: its metadata (pyproject.toml names README.md and LICENSE) and its code.
COPY pyproject.toml README.md LICENSE ./
COPY tomaat ./tomaat
RUN /opt/venv/bin/pip install --no-cache-dir "/src[${EXTRAS}]" \
    && /opt/venv/bin/python -c "import tomaat, ray.serve, psycopg; print('tomaat', tomaat.__version__)"

# ---- runtime ----------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
# wget: KubeRay's readiness probe for RayService worker pods runs `wget ... localhost` inside the Ray container
# (bash, which KubeRay starts `ray start` with, is in the base image already).
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*
# A fixed, unprivileged uid/gid, so that Kubernetes' runAsNonRoot can check it and fsGroup can grant it the
# mounted secrets (deploy/kubernetes/ uses 10001 throughout).
RUN groupadd --system --gid 10001 tomaat \
    && useradd --system --uid 10001 --gid tomaat --home-dir /home/tomaat --create-home --shell /usr/sbin/nologin tomaat
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/tomaat
USER 10001:10001
WORKDIR /home/tomaat
# 9000: `tomaat serve`; 8001: `tomaat-registry serve`. The Ray pods' ports are set in deploy/kubernetes/rayservice.yaml.
EXPOSE 9000 8001
ENTRYPOINT ["tomaat"]
CMD ["--help"]
