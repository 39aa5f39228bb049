# Deepdefacer BIDS App image. docs/containers.md explains use, offline builds, sizes and timings.
#
#   docker build -t deepdefacer .                                   CPU image (tensorflow-cpu)
#   docker build -t deepdefacer:gpu --build-arg VARIANT=gpu .       GPU image (tensorflow[and-cuda])
#   docker run --rm -v /data/bids:/bids:ro -v /data/out:/out deepdefacer /bids /out participant
#
# Offline (air-gapped clusters, or no Docker Hub): a base image made locally (containers/make-base.sh)
# and wheels downloaded on the host (containers/make-wheelhouse.sh); then nothing is fetched during the
# build, which can run with --network none:
#   docker build --network none --build-arg BASE_IMAGE=deepdefacer-base:bookworm \
#                --build-arg WHEELHOUSE=build/wheelhouse -t deepdefacer .
#
# Any Debian bookworm-like base with python3 works: python:3.11-slim-bookworm (default) has it; for a
# Debian image without it, apt installs python3 + python3-venv (this needs the network).
ARG BASE_IMAGE=python:3.11-slim-bookworm
# The stages that install packages also need binutils' strip. Default: the base image, with binutils
# added by apt; containers/make-base.sh makes a ready one for offline builds (BASE_IMAGE-build).
ARG BUILD_IMAGE=${BASE_IMAGE}

FROM ${BUILD_IMAGE} AS build
# DL3008: versions are those of the base image's Debian release; pinning Debian revisions breaks the
# build at every point release. SC2086: $missing is a list of package names, split on purpose.
# hadolint ignore=DL3008,SC2086
RUN missing=""; \
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing="python3 python3-venv"; \
    command -v strip > /dev/null || missing="$missing binutils"; \
    if [ -n "$missing" ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing \
        && rm -rf /var/lib/apt/lists/*; \
    fi

FROM build AS deps
ARG VARIANT=cpu
ARG EXTRAS=validate,atlas
# A folder of wheels inside the build context; the default one holds no wheels, and then pip uses the
# package index.
ARG WHEELHOUSE=containers/wheelhouse
COPY ${WHEELHOUSE} /tmp/wheelhouse/
COPY pyproject.toml containers/requirements.py /tmp/requirements/
# With wheels in the wheelhouse pip is told (through a config file, kept for the next stage) to use
# them and nothing else; without, it uses the package index.
RUN python3 /tmp/requirements/requirements.py --pyproject /tmp/requirements/pyproject.toml \
        --variant "${VARIANT}" --extras "${EXTRAS}" > /tmp/requirements/requirements.txt \
    && set -- /tmp/wheelhouse/*.whl \
    && if [ -e "$1" ]; then \
        printf '[global]\nno-index = true\nfind-links = /tmp/wheelhouse\n' > /tmp/requirements/pip.conf; \
    else : > /tmp/requirements/pip.conf; fi \
    && python3 -m venv /opt/venv \
    && PIP_CONFIG_FILE=/tmp/requirements/pip.conf /opt/venv/bin/pip install --no-cache-dir \
        --disable-pip-version-check --requirement /tmp/requirements/requirements.txt \
    && site_packages=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    && rm -rf "$site_packages"/tensorflow/include "$site_packages"/clang \
        "$site_packages"/pandas/tests "$site_packages"/scipy/*/tests "$site_packages"/scipy/*/*/tests \
        "$site_packages"/numpy/*/tests "$site_packages"/nibabel/tests "$site_packages"/nibabel/*/tests \
    && find "$site_packages" -name '*.so*' -type f -path '*/tensorflow/*' -exec strip --strip-unneeded {} +

# The package itself, installed apart from the dependencies (--target) so that the image's last layer
# holds only Deepdefacer and its model.
FROM deps AS code
COPY pyproject.toml version README.md LICENSE /tmp/src/
COPY deepdefacer /tmp/src/deepdefacer
COPY models /tmp/src/models
RUN PIP_CONFIG_FILE=/tmp/requirements/pip.conf /opt/venv/bin/pip install --no-cache-dir \
        --disable-pip-version-check --no-deps --target /opt/deepdefacer /tmp/src

FROM ${BASE_IMAGE} AS runtime
# As in the build stage: only for a Debian base without python3 (e.g. debian:bookworm-slim).
# hadolint ignore=DL3008
RUN if ! python3 -c 'import venv' 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi
ARG VARIANT=cpu
# The repository's `version` file, which a Dockerfile cannot read into a label: a test
# (tests/test_provenance_details.py) keeps this default equal to it, and the build below fails when
# a --build-arg VERSION differs from it, so the label and /version always agree.
ARG VERSION=3.0.0
# Recorded as GeneratedBy.Container in the outputs' dataset_description.json; its being set is how
# Deepdefacer knows it runs in its image (deepdefacer.bids.generated_by.container_info).
ARG IMAGE_NAME=deepdefacer:${VERSION}-${VARIANT}
LABEL org.opencontainers.image.title="deepdefacer" \
      org.opencontainers.image.description="Deepdefacer BIDS App: removes faces from MRI head scans with a 3D U-Net (${VARIANT})" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"
# Works as any --user and with a read-only root file system (docker run --read-only --tmpfs /tmp):
# everything that writes (HOME, Keras' config, matplotlib, XDG caches) points at /tmp; no .pyc files
# are written at run time (the installed ones were compiled at build time).
ENV PATH=/opt/deepdefacer/bin:/opt/venv/bin:${PATH} \
    HOME=/tmp \
    KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/.matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DEEPDEFACER_CONTAINER_IMAGE="${IMAGE_NAME}"
COPY --from=deps /opt/venv /opt/venv
# The default non-root user (uid 1000); any other uid works as well (docker run --user "$(id -u):$(id -g)").
RUN groupadd --gid 1000 deepdefacer \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin deepdefacer \
    && echo /opt/deepdefacer > "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/deepdefacer.pth"
COPY --from=code /opt/deepdefacer /opt/deepdefacer
# /version: the BIDS Apps convention (the version of the app in the image, readable without running it).
COPY version /version
# Fails the build when the package, its entry point or its model did not make it into the image, or
# when the version label would not be the version inside.
RUN /opt/venv/bin/python -c 'import deepdefacer, importlib.resources as r; \
assert any(p.name.endswith(".keras") for p in r.files("deepdefacer.models").iterdir()), "no model"' \
    && deepdefacer --help > /dev/null \
    && if [ "$(cat /version)" != "${VERSION}" ]; then \
        echo "VERSION=${VERSION} (label) differs from the version file ($(cat /version))" >&2; exit 1; \
    fi
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["/opt/deepdefacer/bin/deepdefacer"]
CMD ["--help"]
