# syntax=docker/dockerfile:1
FROM node:20-bookworm-slim AS build
WORKDIR /app
# The socket-options addon (native/) needs a compiler; the Node.js headers
# come with the image (/usr/local/include/node), so node-gyp downloads nothing.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends g++ make python3 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json tsconfig.json ./
COPY native/binding.gyp native/sockopt.cc native/build.mjs ./native/
COPY src ./src
# `npm ci` builds the addon (install script) and the JavaScript (prepare);
# the image must ship the addon, so a build that skipped it fails here.
RUN npm ci --no-audit --no-fund && test -f native/build/Release/wa_sockopt.node && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/native/build/Release/wa_sockopt.node ./native/build/Release/
COPY package.json ./
COPY config ./config
# The image's unprivileged user; the proxy needs no privilege on port 3128.
USER node
EXPOSE 3128
# Audit records go to stdout (config/default.yaml), operational logs to stderr.
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["serve"]
