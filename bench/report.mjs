// Renders results.json as bench/RESULTS.md.

const dash = '–';

function num(v, digits = 0) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return dash;
  return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function ratio(v) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return dash;
  return `${v >= 10 ? v.toFixed(1) : v.toFixed(2)}×`;
}

/** A median with the range of the rounds, e.g. "520 (480–560)". */
function withRange(v, range, digits = 0) {
  return range ? `${num(v, digits)} (${num(range[0], digits)}–${num(range[1], digits)})` : num(v, digits);
}

const get = (o, path) => path.split('.').reduce((x, k) => (x == null ? undefined : x[k]), o);

/** A Markdown table; a column is right-aligned when its cells are figures. */
function table(head, rows) {
  const line = (cells) => `| ${cells.join(' | ')} |`;
  const figure = (c) => /^([-+]?[\d,.]+×?|–|n\/a|yes|\*\*no\*\*)( \(.*\))?$/.test(String(c));
  const align = head.map((_, i) => (i > 0 && rows.length > 0 && rows.every((r) => figure(r[i])) ? '---:' : '---'));
  return [line(head), line(align), ...rows.map(line)].join('\n');
}

export function renderMarkdown(r) {
  const peers = Object.entries(r.peers);
  const ok = peers.filter(([, p]) => p.status === 'ok');
  const proxies = ok.filter(([n]) => n !== 'direct');
  const rt = (p, path, which) => ratio(p.ratios?.[path]?.[which]);
  const m = r.machine;
  const out = [];

  out.push('# wa-egress benchmark results', '');
  out.push(
    `Measured by \`npm run bench\` ([bench/run.mjs](run.mjs)) on ${r.date} (${r.mode} run, ${num(r.elapsed_s, 0)} s). ` +
      'Every figure of one table comes from the same run on the same machine; ratios are the peer\'s figure divided by ' +
      'direct\'s or squid\'s. For throughput and rates higher is better; for CPU, memory and latency lower is better.',
    '',
  );

  out.push('## Machine', '');
  out.push(
    table(
      ['', ''],
      [
        ['CPU', `${m.cpu_model}, ${m.nproc} cores (nproc)`],
        ['memory', `${m.memory_gib} GiB`],
        ['kernel', m.kernel],
        ['Node.js', m.node],
        ['open files (soft / hard)', `${m.nofile_soft} / ${m.nofile_hard}`],
        ['load average at start / end', `${m.loadavg_at_start.join(', ')} / ${m.loadavg_at_end?.join(', ') ?? dash}`],
      ],
    ),
    '',
    'Other work on the machine during each peer\'s run (CPU outside the bench\'s process tree, in cores): ' +
      ok.map(([n, p]) => `${n} ${num(p.foreign_cpu_cores, 2)}`).join(', ') +
      '. Figures measured while that is well above zero are disturbed.',
    '',
    'Client, sink, DNS server and proxy all share these cores, so a proxy competes with its own load; ' +
      '"direct" has one process fewer in the path and is the physical limit of this machine. ' +
      'All proxies run at once (idle ones cost nothing); the load phases visit them in turn, round after round, ' +
      'so that other work on the machine falls on all of them alike.',
    '',
  );

  out.push('## Peers and versions', '');
  out.push(
    table(
      ['peer', 'version', 'status'],
      peers.map(([n, p]) => [
        n,
        p.version ?? r.versions?.[n] ?? dash,
        p.status === 'ok' ? `ok${p.errors ? ` (errors: ${Object.entries(p.errors).map(([k, v]) => `${k}: ${v}`).join('; ')})` : ''}` : `**${p.status}**: ${p.reason}`,
      ]),
    ),
    '',
    `Node.js ${r.versions?.node ?? m.node} for every Node peer. Target of each CONNECT: ` +
      ok.map(([n, p]) => `${n} \`${p.target_host}\``).join(', ') +
      ' (wa-egress maps `sink.bench` to 127.0.0.1 with `dns.hosts`; the other proxies get the IP literal, their cheapest case).',
    '',
    '`floor-net` and `floor-http` are not proxies to deploy but the least a Node.js CONNECT proxy can do ' +
      '([bench/peers/floor-net.mjs](peers/floor-net.mjs) on `net.Server`, [floor-http.mjs](peers/floor-http.mjs) on `http.Server`): ' +
      'read the head, dial the IP literal, answer 200, `pipe()` both ways, with no policy, audit, keepalive or limits. ' +
      'They show how much of any gap to a native proxy is Node.js itself.',
    '',
  );

  out.push('## Throughput and CPU', '');
  out.push(
    table(
      ['peer', '1 tunnel MiB/s', '×direct', '×squid', '8 tunnels MiB/s', '×direct', '×squid', 'CPU s per GiB', '×squid'],
      ok.map(([n, p]) => [
        n,
        withRange(get(p, 'throughput.tunnels_1.mib_per_s'), get(p, 'throughput.tunnels_1.rounds')),
        rt(p, 'throughput.tunnels_1.mib_per_s', 'vs_direct'),
        rt(p, 'throughput.tunnels_1.mib_per_s', 'vs_squid'),
        withRange(get(p, 'throughput.tunnels_8.mib_per_s'), get(p, 'throughput.tunnels_8.rounds')),
        rt(p, 'throughput.tunnels_8.mib_per_s', 'vs_direct'),
        rt(p, 'throughput.tunnels_8.mib_per_s', 'vs_squid'),
        num(get(p, 'throughput.cpu_s_per_gib'), 3),
        rt(p, 'throughput.cpu_s_per_gib', 'vs_squid'),
      ]),
    ),
    '',
    `One direction (sink → client), ${r.params.durationMs / 1000} s per measurement after the tunnels are up; ` +
      `the median of ${r.params.rounds} round${r.params.rounds > 1 ? 's' : ''} (their range in brackets). ` +
      'CPU is utime+stime of the proxy\'s whole process tree over both runs, divided by the bytes tunnelled.',
    '',
  );

  out.push('## CONNECT handshakes', '');
  out.push(
    table(
      ['peer', 'handshakes/s', '×direct', '×squid', 'proxy CPU µs each', 'p50 under load ms', 'p99 under load ms', 'errors'],
      ok.map(([n, p]) => [
        n,
        withRange(get(p, 'handshakes.per_sec'), get(p, 'handshakes.rounds')),
        rt(p, 'handshakes.per_sec', 'vs_direct'),
        rt(p, 'handshakes.per_sec', 'vs_squid'),
        num(get(p, 'handshakes.cpu_us_per_handshake'), 1),
        num(get(p, 'handshakes.under_load.p50_ms'), 3),
        num(get(p, 'handshakes.under_load.p99_ms'), 3),
        num(get(p, 'handshakes.errors')),
      ]),
    ),
    '',
    `One handshake: connect, \`CONNECT host:port\`, 2xx answer, 32 bytes up and echoed back, the sink closes. ` +
      `${r.params.clients} client processes × ${r.params.concurrency} connections in flight, ${r.params.durationMs / 1000} s after a warm-up; ` +
      `the median of ${r.params.rounds} round${r.params.rounds > 1 ? 's' : ''} (range in brackets). Under-load latencies pool every round's samples.`,
    '',
  );

  out.push('## Added handshake latency (one connection at a time)', '');
  out.push(
    table(
      ['peer', 'p50 ms', 'p99 ms', 'added p50 ms', '×squid', 'added p99 ms', '×squid', 'samples'],
      ok.map(([n, p]) => [
        n,
        num(get(p, 'latency.p50_ms'), 3),
        num(get(p, 'latency.p99_ms'), 3),
        n === 'direct' ? dash : num(get(p, 'latency.added_p50_ms'), 3),
        n === 'direct' ? dash : rt(p, 'latency.added_p50_ms', 'vs_squid'),
        n === 'direct' ? dash : num(get(p, 'latency.added_p99_ms'), 3),
        n === 'direct' ? dash : rt(p, 'latency.added_p99_ms', 'vs_squid'),
        num(get(p, 'latency.samples')),
      ]),
    ),
    '',
    'From the client\'s connect() to the echo of its first 32 bytes, samples of every round pooled; "added" is the peer\'s percentile minus direct\'s.',
    '',
  );

  const levels = r.params.tunnels;
  out.push('## Memory per idle tunnel', '');
  out.push(
    table(
      [
        'peer',
        ...levels.map((l) => `RSS MiB at ${num(l)}`),
        'KiB per tunnel (slope)',
        '×squid',
        'projected MiB at 50,000',
        '×squid',
        'slope when just opened',
        `fds at ${num(levels.at(-1))}`,
        'threads',
      ],
      proxies.map(([n, p]) => {
        const pts = get(p, 'memory.points') ?? [];
        return [
          n,
          ...levels.map((l) => {
            const pt = pts.find((x) => x.target === l);
            return pt ? `${num(pt.rss_kib / 1024, 1)}${pt.tunnels !== l ? ` (${num(pt.tunnels)} open)` : ''}` : dash;
          }),
          num(get(p, 'memory.slope_kib_per_tunnel'), 2),
          rt(p, 'memory.slope_kib_per_tunnel', 'vs_squid'),
          num(get(p, 'memory.projected_50k_mib'), 0),
          rt(p, 'memory.projected_50k_mib', 'vs_squid'),
          num(get(p, 'memory.slope_when_opened_kib_per_tunnel'), 2),
          num(pts.at(-1)?.fds),
          num(pts.at(-1)?.threads),
        ];
      }),
    ),
    '',
    `VmRSS summed over the proxy's process tree with the tunnels open and idle (each carried one 16-byte echo), read after every peer has rested ${r.params.idleMs / 1000} s at that count: ` +
      'a gateway holds its tunnels for days, and a Node.js heap gives back what the opening burst allocated only when V8\'s memory reducer runs, some twenty seconds after allocation stops. ' +
      '"When just opened" is the slope of RSS read as soon as it stopped changing after the tunnels were opened. ' +
      'Every peer has its own client and echo sink processes here, and all peers hold their tunnels at once. ' +
      'The slope is a least-squares fit over the three counts; the projection extends it from the last point. ' +
      'Every tunnel costs the proxy two descriptors, hence 9,000 under the 20,000 cap. Direct has no proxy to measure.',
    '',
  );

  out.push('## Handshakes with DNS resolution', '');
  out.push(
    table(
      ['peer', 'handshakes/s', '×direct', '×squid', 'DNS queries per handshake', 'errors', 'how'],
      peers
        .filter(([, p]) => p.status === 'ok')
        .map(([n, p]) =>
          p.dns?.skipped
            ? [n, dash, dash, dash, dash, dash, `not measured: ${p.dns.skipped}`]
            : [
                n,
                withRange(get(p, 'dns.per_sec'), get(p, 'dns.rounds')),
                rt(p, 'dns.per_sec', 'vs_direct'),
                rt(p, 'dns.per_sec', 'vs_squid'),
                num(get(p, 'dns.queries_per_handshake'), 2),
                num(get(p, 'dns.errors')),
                get(p, 'dns.how') ?? dash,
              ],
        ),
    ),
    '',
    `The handshake load above, but to ${num(r.params.dnsNames)} names (\`n<i>.dns.bench\`) answered by the bench's DNS server ` +
      '(A 127.0.0.1, TTL 300 s, no AAAA), in its own process.',
    '',
  );

  out.push('## Policy decisions (microbenchmark)', '');
  const pol = r.policy ?? {};
  if (pol.error) out.push(`Failed: ${pol.error}`, '');
  else {
    out.push(
      table(
        ['benchmark', 'per second', 'p50 ns', 'p99 ns', 'p99.9 ns'],
        [
          ['`decide()`: the whole decision path', num(pol.decide?.per_sec), num(pol.decide?.p50_ns), num(pol.decide?.p99_ns), num(pol.decide?.p999_ns)],
          [
            'hostname match: `Policy.rulesFor` + `Policy.hostRuleIndex`',
            num(pol.hostname?.per_sec),
            num(pol.hostname?.p50_ns),
            num(pol.hostname?.p99_ns),
            num(pol.hostname?.p999_ns),
          ],
        ],
      ),
      '',
      `${num(pol.names)} hostnames (test/fixtures/whatsapp_domainlist.txt) on port ${pol.port}, judged against config/default.yaml ` +
        `(${pol.rules} rules, ${pol.patterns} host patterns, ${num(pol.cidrs)} CIDRs) with the built code in dist/; ` +
        `the resolver's static hosts map every name to ${pol.answer}. Verdicts: ${pol.verdicts?.allow_by_hostname} allowed by a hostname rule, ` +
        `${pol.verdicts?.allow_by_cidr} by a CIDR, ${pol.verdicts?.deny} denied after resolution (${pol.answer} is in none of the vendor's ranges), ${pol.verdicts?.fail} failed. ` +
        `Latencies are per call with the timer's own cost (${pol.timer_overhead_ns} ns) subtracted; decide() is awaited one call at a time.`,
      '',
    );
  }

  if (r.targets?.length) {
    out.push('## wa-egress against the targets of issue 5', '');
    out.push(
      table(
        ['target', 'measured', 'met'],
        r.targets.map((t) => [t.target, typeof t.value === 'number' ? num(t.value, t.value < 10 ? 3 : 0) : dash, t.pass === null ? 'n/a' : t.pass ? 'yes' : '**no**']),
      ),
      '',
    );
  }

  out.push(...scaleOut(r));

  const notRun = peers.filter(([, p]) => p.status !== 'ok');
  out.push('## Skipped or failed peers', '');
  out.push(notRun.length ? notRun.map(([n, p]) => `- **${n}**: ${p.status}: ${p.reason}`).join('\n') : 'None.', '');

  out.push('## How to run', '');
  out.push(
    '```sh\nnpm run build && npm run bench          # full run, rewrites this file and results.json\n' +
      'node bench/run.mjs --smoke               # seconds: direct, wa-egress, wa-egress-w2; forwards: direct, wa-egress (part of npm test)\n' +
      'node bench/run.mjs --peers wa-egress,squid --duration 3 --profile   # a subset; --cpu-prof for the Node peers\n' +
      'node bench/run.mjs --peers wa-egress,floor-net --phases handshakes,latency --rounds 2   # some phases only\n' +
      'node bench/run.mjs --peers wa-egress,squid --phases memory --idle 45   # idle tunnels, resting 45 s at each count\n' +
      'node bench/run.mjs --peers wa-egress,wa-egress-w2,wa-egress-w2-none,squid --phases handshakes,throughput   # workers\n' +
      'node bench/run.mjs --phases forward --forward-peers wa-egress,haproxy,haproxy-splice,socat --forward-conns 1000,2500,4000\n```',
    '',
    'squid, tinyproxy, haproxy and socat are installed with apt-get when missing (their services are not started; a package that cannot be installed skips its peer); each proxy runs ' +
      'as its own process on 127.0.0.1 with a config file in a temp dir that allows CONNECT to the bench ports and never cuts an idle tunnel.',
    '',
  );
  return out.join('\n');
}

// ------------------------------------------------------------------ issue 11

const share = (counts) => {
  const n = Object.values(counts).reduce((a, b) => a + b, 0);
  return Object.keys(counts)
    .sort((a, b) => Number(a) - Number(b))
    .map((w) => `${w}: ${num(counts[w])} (${num((100 * counts[w]) / Math.max(1, n), 0)} %)`)
    .join(', ');
};

function scaleOut(r) {
  const out = [];
  const P = r.peers;
  const okp = (n) => (P[n]?.status === 'ok' ? P[n] : null);
  const w1 = okp('wa-egress');
  const workers = ['wa-egress', 'wa-egress-w2', 'wa-egress-w2-none'].filter((n) => okp(n));
  const fwd = r.forward?.peers ?? {};
  const fok = Object.entries(fwd).filter(([, p]) => p.status === 'ok');
  if (workers.length < 2 && !fok.length) return out;

  out.push('## Scaling out (issue 11): workers and forward listeners', '');
  out.push(
    'Handshakes at squid\'s cost and forwards at HAProxy\'s speed: wa-egress with `workers: 2` under both node:cluster scheduling policies, ' +
      'and its raw TCP forward listeners (`listen.forwards`) beside HAProxy and socat. Every figure comes from the same run as the tables above.',
    '',
  );

  if (r.targets_scale_out?.length) {
    out.push('### Targets', '');
    const v = (x, d) => (typeof x === 'number' ? num(x, d) : dash);
    out.push(
      table(
        ['target', 'measured', 'against', 'their figure', 'ratio', 'met'],
        r.targets_scale_out.map((t) => {
          const d = /throughput/.test(t.target) ? 0 : /CPU/.test(t.target) ? 1 : 0;
          return [t.target, v(t.value?.ours, d), t.against, v(t.value?.theirs, d), ratio(t.ratio), t.pass === null ? 'n/a' : t.pass ? 'yes' : '**no**'];
        }),
      ),
      '',
      'CPU per handshake is the proxy\'s whole process tree (with workers: the primary and both workers). ' +
        'Forward throughput is compared with the better of HAProxy without and with splice, at each connection count.',
      '',
    );
  }

  if (workers.length) {
    out.push('### Workers', '');
    out.push(
      table(
        ['peer', 'scheduling', 'handshakes/s', '×wa-egress', '×squid', 'CPU µs each', 'of it primary', 'of it workers', '1 tunnel MiB/s', '8 tunnels MiB/s', 'CPU s per GiB', 'other work (cores)'],
        workers.map((n) => {
          const p = P[n];
          const hs = get(p, 'handshakes.per_sec');
          const base = get(w1, 'handshakes.per_sec');
          return [
            n,
            n === 'wa-egress' ? 'one process' : p.spread?.sched === 'none' ? 'none (workers accept)' : 'round robin (primary accepts)',
            withRange(hs, get(p, 'handshakes.rounds')),
            typeof hs === 'number' && typeof base === 'number' && base ? ratio(hs / base) : dash,
            ratio(p.ratios?.['handshakes.per_sec']?.vs_squid),
            num(get(p, 'handshakes.cpu_us_per_handshake'), 1),
            n === 'wa-egress' ? dash : num(get(p, 'handshakes.primary_cpu_us_per_handshake'), 1),
            n === 'wa-egress' ? dash : num(get(p, 'handshakes.workers_cpu_us_per_handshake'), 1),
            withRange(get(p, 'throughput.tunnels_1.mib_per_s'), get(p, 'throughput.tunnels_1.rounds')),
            withRange(get(p, 'throughput.tunnels_8.mib_per_s'), get(p, 'throughput.tunnels_8.rounds')),
            num(get(p, 'throughput.cpu_s_per_gib'), 3),
            num(p.foreign_cpu_cores, 2),
          ];
        }),
      ),
      '',
      'The CONNECT handshake and throughput phases above, the same load and rounds. "Of it primary" is the utime+stime of the primary process ' +
        'alone over the measured handshakes; "of it workers" the rest of the tree. "Other work" is the CPU that processes outside the bench used ' +
        'on average while that peer was measured (as in Machine above): with two cores, figures measured while it is well above zero are disturbed, ' +
        'rates more than CPU per handshake.',
      '',
    );
    const spreads = workers.filter((n) => P[n].spread);
    if (spreads.length) {
      out.push('#### Spread: connections per worker', '');
      out.push(
        table(
          ['peer', 'scheduling', 'share (worker 1/2, %)', 'connections per worker', ...Array.from({ length: r.params.rounds }, (_, i) => `round ${i + 1}`)],
          spreads.map((n) => {
            const sp = P[n].spread;
            return [
              n,
              sp.sched === 'none' ? 'NODE_CLUSTER_SCHED_POLICY=none' : 'round robin (default)',
              sp.share,
              share(sp.total),
              ...Array.from({ length: r.params.rounds }, (_, i) => sp.rounds[i]?.share ?? dash),
            ];
          }),
        ),
        '',
        'Counted from the audit log: one `egress.allowed` record per connection of the measured handshake phase (after the warm-up), ' +
          'whose id `<boot>.<workerId>-<seq>` names the worker that took it.',
        '',
      );
    }
  }

  const prof = r.primary_profile;
  if (prof && !prof.error) {
    out.push('#### Where the primary\'s CPU goes (round robin, `--cpu-prof`)', '');
    out.push(
      table(
        ['where', 'ms', '% of the primary\'s busy JS thread'],
        (prof.categories ?? []).map((c) => [c.category, num(c.ms, 0), num(c.pct_of_busy, 1)]),
      ),
      '',
      `A separate \`wa-egress-w2\` (round robin) under \`node --cpu-prof\` with the same handshake load (${num(prof.handshakes)} handshakes, ${num(prof.per_sec)}/s); ` +
        `samples of ${prof.window ?? 'the whole process'}: ${num(prof.busy_s, 2)} s busy of ${num(prof.sampled_s, 2)} s. ` +
        `The primary used ${num(prof.primary_cpu_us_per_handshake, 1)} µs of CPU (utime+stime, the kernel's share included) per handshake there; ` +
        'a profile sees only its JavaScript thread, so the kernel\'s work for accept(2) and for passing each socket over the IPC channel (SCM_RIGHTS) is missing from it. ' +
        `Top functions by self time: ${prof.self_top.slice(0, 6).map((e) => `\`${e.fn}\` ${num(e.pct_of_busy, 1)} %`).join(', ')}.`,
      '',
    );
  } else if (prof?.error) out.push(`Profile of the primary: failed: ${prof.error}`, '');

  if (fok.length) {
    out.push('### Raw TCP forwards', '');
    const fr = (p, path, which) => ratio(p.ratios?.[path]?.[which]);
    out.push(
      table(
        ['peer', '1 conn MiB/s', '×HAProxy best', '×direct', '8 conns MiB/s', '×HAProxy best', '×direct', 'CPU s per GiB', '×HAProxy', 'connections/s', '×HAProxy best', 'CPU µs per connection', 'other work (cores)'],
        fok.map(([n, p]) => [
          n,
          withRange(get(p, 'throughput.conns_1.mib_per_s'), get(p, 'throughput.conns_1.rounds')),
          fr(p, 'throughput.conns_1.mib_per_s', 'vs_haproxy_best'),
          fr(p, 'throughput.conns_1.mib_per_s', 'vs_direct'),
          withRange(get(p, 'throughput.conns_8.mib_per_s'), get(p, 'throughput.conns_8.rounds')),
          fr(p, 'throughput.conns_8.mib_per_s', 'vs_haproxy_best'),
          fr(p, 'throughput.conns_8.mib_per_s', 'vs_direct'),
          num(get(p, 'throughput.cpu_s_per_gib'), 3),
          fr(p, 'throughput.cpu_s_per_gib', 'vs_haproxy'),
          withRange(get(p, 'connections.per_sec'), get(p, 'connections.rounds')),
          fr(p, 'connections.per_sec', 'vs_haproxy_best'),
          num(get(p, 'connections.cpu_us_per_conn'), 1),
          num(p.foreign_cpu_cores, 2),
        ]),
      ),
      '',
      'Each forward peer listens once per sink listener and relays to it: throughput from the sinks\' `source` listeners (one direction, sink → client), ' +
        `connections per second to their \`close\` listeners (open, one byte up and echoed, the sink closes; ${r.params.clients} clients × ${r.params.concurrency} in flight). ` +
        `${r.params.durationMs / 1000} s per measurement, the median of ${r.params.rounds} round${r.params.rounds > 1 ? 's' : ''} (range in brackets). ` +
        '"×HAProxy best" divides by the better of `haproxy` (no splice) and `haproxy-splice`; "×HAProxy" for CPU by `haproxy`. ' +
        'wa-egress judges, resolves (`sink.bench` in `dns.hosts`) and audits every forward connection as it does a CONNECT; HAProxy and socat are given the IP literal.',
      '',
    );
    const levels = r.forward.params.conns;
    const mem = fok.filter(([, p]) => p.memory);
    if (mem.length) {
      out.push('#### Memory per idle forward connection', '');
      out.push(
        table(
          ['peer', ...levels.map((l) => `RSS MiB at ${num(l)}`), 'KiB per connection (RSS slope)', '×HAProxy', 'PSS slope KiB', `fds at ${num(levels.at(-1))}`, 'threads'],
          mem.map(([n, p]) => {
            const pts = p.memory.points;
            return [
              n,
              ...levels.map((l) => {
                const pt = pts.find((x) => x.target === l);
                return pt ? `${num(pt.rss_kib / 1024, 1)}${pt.conns !== l ? ` (${num(pt.conns)} open)` : ''}` : dash;
              }),
              num(p.memory.slope_kib_per_conn, 2),
              fr(p, 'memory.slope_kib_per_conn', 'vs_haproxy'),
              num(p.memory.pss_slope_kib_per_conn, 2),
              num(pts.at(-1)?.fds),
              num(pts.at(-1)?.threads),
            ];
          }),
        ),
        '',
        `Idle connections through every forward peer at once (each with its own holder client and echo sink), RSS of the peer's process tree read after all have rested ${r.forward.params.idle_s} s at each count; ` +
          'the slope is a least-squares fit over the counts. PSS counts a page shared by several processes once in all: ' +
          'socat forks a process per connection, whose shared pages RSS counts again in every one.' +
          (fwd['wa-egress-w2']?.memory ? ' `wa-egress-w2` is three processes (the primary and two workers).' : ''),
        '',
      );
    }
    const skipped = Object.entries(fwd).filter(([, p]) => p.status !== 'ok');
    if (skipped.length) out.push(skipped.map(([n, p]) => `- forward peer **${n}**: ${p.status}: ${p.reason}`).join('\n'), '');
    out.push(
      'Versions: ' + Object.entries(fwd).map(([n, p]) => `${n}: ${p.version}`).join('; ') + '.',
      '',
    );
  }

  out.push('### What limits', '');
  out.push(...limits(r), '');
  return out;
}

/** The "what limits" paragraphs, from this run's figures. */
function limits(r) {
  const P = r.peers;
  const g = (n, path) => get(P[n], path);
  const lines = [];
  const w1 = g('wa-egress', 'handshakes.per_sec');
  const rr = g('wa-egress-w2', 'handshakes.per_sec');
  const none = g('wa-egress-w2-none', 'handshakes.per_sec');
  const nproc = r.machine.nproc;
  if (typeof w1 === 'number' && (typeof rr === 'number' || typeof none === 'number')) {
    lines.push(
      `- **Cores.** This machine has ${nproc} cores, and the bench's ${r.params.clients} client processes and ${r.params.sinks} sinks run on them beside the proxy: ` +
        `a second worker gets no core of its own, it takes CPU from the load generators and from the other worker. ` +
        `Here two workers made ${typeof rr === 'number' ? `${ratio(rr / w1)} (round robin)` : dash} and ${typeof none === 'number' ? `${ratio(none / w1)} (none)` : dash} ` +
        'of one process\'s handshakes per second. Workers pay off when there are cores to spare for them; this benchmark cannot show that, only what they cost.',
    );
    const pRr = g('wa-egress-w2', 'handshakes.primary_cpu_us_per_handshake');
    const pNone = g('wa-egress-w2-none', 'handshakes.primary_cpu_us_per_handshake');
    const c1 = g('wa-egress', 'handshakes.cpu_us_per_handshake');
    const c2 = g('wa-egress-w2', 'handshakes.cpu_us_per_handshake');
    lines.push(
      `- **The primary.** It never proxies, yet it used ${num(pRr, 1)} µs per handshake under round robin and ${num(pNone, 1)} µs with ` +
        '`NODE_CLUSTER_SCHED_POLICY=none`. Under round robin it accepts every connection itself and hands the socket to a worker over the IPC channel ' +
        '(a message carrying the descriptor, SCM_RIGHTS, and the worker\'s ack); under either policy every worker sends it each audit record ' +
        '(two per connection: `egress.allowed` and `egress.closed`) as a serialised IPC message, which it decodes and writes: the one audit writer. ' +
        `The difference between the two policies is about the handoff's cost; what remains with \`none\` is the audit records. ` +
        `In all, the tree spent ${num(c2, 1)} µs per handshake with two workers against ${num(c1, 1)} µs in one process.`,
    );
  }
  const prof = r.primary_profile;
  if (prof?.categories?.length) {
    lines.push(
      '- **Profile of the primary** (its JavaScript thread, busy time): ' +
        prof.categories
          .filter((c) => c.category !== 'other')
          .map((c) => `${c.category} ${num(c.pct_of_busy, 0)} %`)
          .join('; ') +
        `; everything else ${num(prof.categories.find((c) => c.category === 'other')?.pct_of_busy ?? 0, 0)} %.`,
    );
  }
  const f = r.forward?.peers ?? {};
  const fw = f['wa-egress']?.status === 'ok' ? f['wa-egress'] : null;
  const hp = ['haproxy', 'haproxy-splice'].filter((n) => f[n]?.status === 'ok');
  if (fw && hp.length) {
    const t8 = fw.ratios?.['throughput.conns_8.mib_per_s']?.vs_haproxy_best;
    const t1 = fw.ratios?.['throughput.conns_1.mib_per_s']?.vs_haproxy_best;
    const cps = fw.ratios?.['connections.per_sec']?.vs_haproxy_best;
    lines.push(
      `- **Forwards.** wa-egress moved ${ratio(t1)} (one connection) and ${ratio(t8)} (eight) of HAProxy's better throughput, and opened ${ratio(cps)} of its connections per second. ` +
        'A forwarded byte costs wa-egress a read into user space and a write out of it, as it does HAProxy without splice; ' +
        'HAProxy\'s connections are cheaper because it does nothing per connection but relay, where wa-egress judges the destination against the policy, resolves it, ' +
        'checks the address, and writes two audit records.' +
        (f.haproxy?.status === 'ok' && f['haproxy-splice']?.status === 'ok'
          ? ` With \`option splice-auto\` HAProxy moves bytes between the sockets inside the kernel (through a pipe): here ${ratio(
              f['haproxy-splice'].ratios?.['throughput.conns_8.mib_per_s']?.vs_haproxy,
            )} of its throughput without splice for eight connections, ${ratio(f['haproxy-splice'].ratios?.['throughput.cpu_s_per_gib']?.vs_haproxy)} of its CPU per GiB.`
          : ''),
    );
  }
  if (f.socat?.status === 'ok' && f.socat.memory) {
    lines.push(
      `- **socat** forks a process per connection: ${num(f.socat.connections?.per_sec)} connections/s, and ${num(f.socat.memory.slope_kib_per_conn, 0)} KiB of RSS per idle connection ` +
        `(${num(f.socat.memory.pss_slope_kib_per_conn, 0)} KiB PSS, its shared pages counted once).`,
    );
  }
  if (!lines.length) lines.push('Not enough peers ran to say.');
  return lines;
}
