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

  const notRun = peers.filter(([, p]) => p.status !== 'ok');
  out.push('## Skipped or failed peers', '');
  out.push(notRun.length ? notRun.map(([n, p]) => `- **${n}**: ${p.status}: ${p.reason}`).join('\n') : 'None.', '');

  out.push('## How to run', '');
  out.push(
    '```sh\nnpm run build && npm run bench          # full run, rewrites this file and results.json\n' +
      'node bench/run.mjs --smoke               # a few seconds: direct and wa-egress only (part of npm test)\n' +
      'node bench/run.mjs --peers wa-egress,squid --duration 3 --profile   # a subset; --cpu-prof for the Node peers\n' +
      'node bench/run.mjs --peers wa-egress,floor-net --phases handshakes,latency --rounds 2   # some phases only\n' +
      'node bench/run.mjs --peers wa-egress,squid --phases memory --idle 45   # idle tunnels, resting 45 s at each count\n```',
    '',
    'squid and tinyproxy are installed with apt-get when missing (their services are not started); each proxy runs ' +
      'as its own process on 127.0.0.1 with a config file in a temp dir that allows CONNECT to the bench ports and never cuts an idle tunnel.',
    '',
  );
  return out.join('\n');
}
