# qsdn: one image for the agent and the controller (Debian 12, libyang 2.1.30 from Debian).
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       libyang2-dev libyang-tools gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/qsdn
COPY pyproject.toml README.md ./
COPY qsdn ./qsdn
COPY agent ./agent
COPY controller ./controller
COPY yang ./yang
RUN pip install --no-cache-dir . pyang \
    && useradd --system --home /var/lib/qsdn --create-home qsdn

ENV QSDN_YANG_DIR=/opt/qsdn/yang
USER qsdn
VOLUME ["/var/lib/qsdn"]
EXPOSE 830 8080
ENTRYPOINT []
CMD ["qsdn", "--help"]
