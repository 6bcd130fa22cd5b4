# syntax=docker/dockerfile:1
# Build: docker build -t wa-egress .   (README: Operations, Container image)
FROM node:20-bookworm-slim AS build
WORKDIR /app
# The socket-options addon (native/) needs a compiler; the Node.js headers
# come with the image (/usr/local/include/node), so node-gyp downloads nothing.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends g++ make python3 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json tsconfig.json ./
COPY native/binding.gyp native/sockopt.cc native/build.mjs ./native/
COPY src ./src
COPY config ./config
COPY deploy/container/image-config.mjs ./deploy/container/
# `npm ci` builds the addon (install script) and the JavaScript (prepare);
# the image must ship the addon, so a build that skipped it fails here.
RUN npm ci --no-audit --no-fund && test -f native/build/Release/wa_sockopt.node
# The image's config: the bundled policy plus listen.admin on loopback for the HEALTHCHECK.
RUN mkdir -p /out && node deploy/container/image-config.mjs 127.0.0.1:9090 > /out/config.yaml

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
# Production dependencies only; no scripts: the addon and dist/ come built from the build stage.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY --from=build /app/native/build/Release/wa_sockopt.node ./native/build/Release/
COPY config ./config
# serve reads /etc/wa-egress/config.yaml when it exists (mount a ConfigMap or a
# file there), else the bundled config/default.yaml; WA_EGRESS_CONFIG overrides.
COPY --from=build /out/config.yaml /etc/wa-egress/config.yaml
# The image's unprivileged user (uid 1000); the proxy needs no privilege on port 3128.
# Nothing is written at run time: audit records go to stdout, operational logs
# to stderr, so the root filesystem can be read-only. An audit.file needs a
# writable mount (e.g. /var/log/wa-egress).
USER node
EXPOSE 3128
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["node", "dist/cli.js", "health"]
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["serve"]
