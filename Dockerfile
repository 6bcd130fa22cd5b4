# syntax=docker/dockerfile:1
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
# `npm ci` builds through the prepare script; then drop dev dependencies.
RUN npm ci --no-audit --no-fund && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY config ./config
# The image's unprivileged user; the proxy needs no privilege on port 3128.
USER node
EXPOSE 3128
# Audit records go to stdout (config/default.yaml), operational logs to stderr.
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["serve"]
