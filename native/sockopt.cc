// Socket options Node.js does not expose, on a connected socket's descriptor:
// TCP keepalive timing and TCP_USER_TIMEOUT (set and read back), and the
// original destination of a connection redirected by iptables (REDIRECT or
// TPROXY-less DNAT) for the transparent gateway, and the IP_TRANSPARENT
// listening socket TPROXY needs. Linux only; every failure
// throws an Error whose `code` is the errno name (EBADF, ENOPROTOOPT, ...).
#include <napi.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

// From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>,
// which clash with glibc's <netinet/in.h>.
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

namespace {

const char* ErrnoName(int err) {
  switch (err) {
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case ENOTSOCK: return "ENOTSOCK";
    case ENOPROTOOPT: return "ENOPROTOOPT";
    case ENOENT: return "ENOENT";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ENOTCONN: return "ENOTCONN";
    case EPERM: return "EPERM";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EACCES: return "EACCES";
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EMFILE: return "EMFILE";
    default: return "EUNKNOWN";
  }
}

Napi::Value Throw(Napi::Env env, const char* call, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(call) + ": " + std::strerror(err));
  e.Set("code", Napi::String::New(env, ErrnoName(err)));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, call));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

bool IntArg(const Napi::CallbackInfo& info, size_t i, int* out) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    Napi::TypeError::New(info.Env(), "argument " + std::to_string(i) + " must be an integer")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = info[i].As<Napi::Number>().Int32Value();
  return true;
}

bool SetInt(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof value) == 0;
}

bool GetInt(int fd, int level, int name, int* value) {
  socklen_t len = sizeof *value;
  return getsockopt(fd, level, name, value, &len) == 0;
}

// setTcpOptions(fd, idleSec, intervalSec, count, userTimeoutMs)
// idleSec 0 leaves SO_KEEPALIVE off (and interval/count untouched);
// userTimeoutMs < 0 leaves TCP_USER_TIMEOUT as it is, 0 restores the kernel's default.
Napi::Value SetTcpOptions(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd, idle, interval, count, user_timeout;
  if (!IntArg(info, 0, &fd) || !IntArg(info, 1, &idle) || !IntArg(info, 2, &interval) ||
      !IntArg(info, 3, &count) || !IntArg(info, 4, &user_timeout)) {
    return env.Undefined();
  }
  if (idle > 0) {
    if (!SetInt(fd, IPPROTO_TCP, TCP_KEEPIDLE, idle)) return Throw(env, "setsockopt(TCP_KEEPIDLE)", errno);
    if (!SetInt(fd, IPPROTO_TCP, TCP_KEEPINTVL, interval)) return Throw(env, "setsockopt(TCP_KEEPINTVL)", errno);
    if (!SetInt(fd, IPPROTO_TCP, TCP_KEEPCNT, count)) return Throw(env, "setsockopt(TCP_KEEPCNT)", errno);
    if (!SetInt(fd, SOL_SOCKET, SO_KEEPALIVE, 1)) return Throw(env, "setsockopt(SO_KEEPALIVE)", errno);
  }
  if (user_timeout >= 0 && !SetInt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, user_timeout)) {
    return Throw(env, "setsockopt(TCP_USER_TIMEOUT)", errno);
  }
  return env.Undefined();
}

// getTcpOptions(fd) -> { keepalive, idle, interval, count, userTimeout }
Napi::Value GetTcpOptions(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!IntArg(info, 0, &fd)) return env.Undefined();
  int keepalive, idle, interval, count, user_timeout;
  if (!GetInt(fd, SOL_SOCKET, SO_KEEPALIVE, &keepalive)) return Throw(env, "getsockopt(SO_KEEPALIVE)", errno);
  if (!GetInt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle)) return Throw(env, "getsockopt(TCP_KEEPIDLE)", errno);
  if (!GetInt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval)) return Throw(env, "getsockopt(TCP_KEEPINTVL)", errno);
  if (!GetInt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count)) return Throw(env, "getsockopt(TCP_KEEPCNT)", errno);
  if (!GetInt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout)) return Throw(env, "getsockopt(TCP_USER_TIMEOUT)", errno);
  Napi::Object out = Napi::Object::New(env);
  out.Set("keepalive", Napi::Boolean::New(env, keepalive != 0));
  out.Set("idle", Napi::Number::New(env, idle));
  out.Set("interval", Napi::Number::New(env, interval));
  out.Set("count", Napi::Number::New(env, count));
  out.Set("userTimeout", Napi::Number::New(env, user_timeout));
  return out;
}

// originalDst(fd) -> { address, port, family }: where the client was going
// before netfilter redirected the connection. IPv4 connections (also those
// on a dual-stack socket, as v4-mapped peers) ask SO_ORIGINAL_DST, IPv6 ones
// IP6T_SO_ORIGINAL_DST. A connection that was not redirected has no such
// entry: ENOENT (conntrack loaded) or ENOPROTOOPT (no conntrack).
Napi::Value OriginalDst(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!IntArg(info, 0, &fd)) return env.Undefined();
  sockaddr_storage local{};
  socklen_t len = sizeof local;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) != 0) return Throw(env, "getsockname", errno);
  bool v4 = local.ss_family == AF_INET;
  if (local.ss_family == AF_INET6) {
    const in6_addr& a = reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr;
    v4 = IN6_IS_ADDR_V4MAPPED(&a);
  } else if (!v4) {
    return Throw(env, "originalDst", EAFNOSUPPORT);
  }
  char text[INET6_ADDRSTRLEN];
  Napi::Object out = Napi::Object::New(env);
  if (v4) {
    sockaddr_in dst{};
    len = sizeof dst;
    if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &dst, &len) != 0) return Throw(env, "getsockopt(SO_ORIGINAL_DST)", errno);
    inet_ntop(AF_INET, &dst.sin_addr, text, sizeof text);
    out.Set("port", Napi::Number::New(env, ntohs(dst.sin_port)));
    out.Set("family", Napi::Number::New(env, 4));
  } else {
    sockaddr_in6 dst{};
    len = sizeof dst;
    if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &dst, &len) != 0) {
      return Throw(env, "getsockopt(IP6T_SO_ORIGINAL_DST)", errno);
    }
    inet_ntop(AF_INET6, &dst.sin6_addr, text, sizeof text);
    out.Set("port", Napi::Number::New(env, ntohs(dst.sin6_port)));
    out.Set("family", Napi::Number::New(env, 6));
  }
  out.Set("address", Napi::String::New(env, text));
  return out;
}

// transparentListen(address, port, backlog) -> fd: a listening TCP socket
// with IP_TRANSPARENT (IPv4) or IPV6_TRANSPARENT (IPv6, dual-stack for ::)
// set before bind, as TPROXY needs: the kernel hands a TPROXY'd connection
// only to such a socket. Non-blocking and close-on-exec, for Node's
// `server.listen({ fd })`. EPERM without CAP_NET_ADMIN.
Napi::Value TransparentListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int port, backlog;
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "argument 0 must be an IP address string").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!IntArg(info, 1, &port) || !IntArg(info, 2, &backlog)) return env.Undefined();
  std::string text = info[0].As<Napi::String>().Utf8Value();
  sockaddr_storage addr{};
  socklen_t len;
  bool v6 = text.find(':') != std::string::npos;
  if (v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, text.c_str(), &a->sin6_addr) != 1) return Throw(env, "inet_pton", EINVAL);
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&addr);
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, text.c_str(), &a->sin_addr) != 1) return Throw(env, "inet_pton", EINVAL);
    len = sizeof *a;
  }
  int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd < 0) return Throw(env, "socket", errno);
  auto fail = [&](const char* call) {
    int err = errno;
    close(fd);
    return Throw(env, call, err);
  };
  if (!SetInt(fd, SOL_SOCKET, SO_REUSEADDR, 1)) return fail("setsockopt(SO_REUSEADDR)");
  if (v6) {
    // "::" takes IPv4 too, as Node's own listeners do.
    if (!SetInt(fd, IPPROTO_IPV6, IPV6_V6ONLY, 0)) return fail("setsockopt(IPV6_V6ONLY)");
    if (!SetInt(fd, SOL_IPV6, IPV6_TRANSPARENT, 1)) return fail("setsockopt(IPV6_TRANSPARENT)");
  } else if (!SetInt(fd, SOL_IP, IP_TRANSPARENT, 1)) {
    return fail("setsockopt(IP_TRANSPARENT)");
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) return fail("bind");
  if (listen(fd, backlog) != 0) return fail("listen");
  return Napi::Number::New(env, fd);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("setTcpOptions", Napi::Function::New(env, SetTcpOptions));
  exports.Set("getTcpOptions", Napi::Function::New(env, GetTcpOptions));
  exports.Set("originalDst", Napi::Function::New(env, OriginalDst));
  exports.Set("transparentListen", Napi::Function::New(env, TransparentListen));
  return exports;
}

}  // namespace

NODE_API_MODULE(wa_sockopt, Init)
