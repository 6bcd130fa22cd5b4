/**
 * The IANA IPv4 and IPv6 Special-Purpose Address Registries, as published
 * on 2026-07-18 (data/iana-ipv4-special-registry.csv and
 * data/iana-ipv6-special-registry.csv hold the CSV rows; data/README.md says
 * where they come from; test/unit/special-registry.test.ts keeps this table
 * and the CSV files equal), with the proxy's decision for each row.
 *
 * `reachable` is the registry's "Globally Reachable" column: 'true',
 * 'false', 'n/a', or '' for a terminated row. Every row that is not 'true'
 * is denied (`range` is the reason code records give); the most specific
 * row that contains an address decides, as the registry's footnotes say
 * ("unless allowed by a more specific allocation"). Blocks the registry
 * does not list but that are not global unicast are in LOCAL_ROWS.
 */

export type SpecialRange =
  | 'unspecified'
  | 'private'
  | 'shared_cgnat'
  | 'loopback'
  | 'link_local'
  | 'ietf_protocol'
  | 'documentation'
  | 'benchmarking'
  | 'multicast'
  | 'reserved'
  | 'unique_local'
  | 'discard_only'
  | 'ipv6_6to4'
  | 'ipv6_teredo'
  /** A terminated registry row, or a block deprecated by RFC (::/96, fec0::/10). */
  | 'deprecated'
  /** fec0::/10, deprecated by RFC 3879 but still routed on old networks. */
  | 'site_local'
  /** 64:ff9b:1::/48, local-use IPv4/IPv6 translation (RFC 8215). */
  | 'nat64_local'
  /** 100:0:0:1::/64 (RFC 9780). */
  | 'dummy'
  /** 5f00::/16, SRv6 segment identifiers (RFC 9602). */
  | 'srv6_sid';

export type Reachable = 'true' | 'false' | 'n/a' | '';

export interface RegistryRow {
  /** One or more CIDR blocks (one registry row may list two). */
  blocks: string[];
  name: string;
  rfc: string;
  allocated: string;
  /** The termination date of a deprecated row. */
  terminated?: string;
  reachable: Reachable;
  /** The proxy's verdict: null (not denied) exactly when `reachable` is 'true'. */
  range: SpecialRange | null;
}

export const REGISTRY_DATE = '2026-07-18';

export const IPV4_REGISTRY: readonly RegistryRow[] = [
  { blocks: ['0.0.0.0/8'], name: '"This network"', rfc: 'RFC791', allocated: '1981-09', reachable: 'false', range: 'unspecified' },
  { blocks: ['0.0.0.0/32'], name: '"This host on this network"', rfc: 'RFC1122', allocated: '1981-09', reachable: 'false', range: 'unspecified' },
  { blocks: ['10.0.0.0/8'], name: 'Private-Use', rfc: 'RFC1918', allocated: '1996-02', reachable: 'false', range: 'private' },
  { blocks: ['100.64.0.0/10'], name: 'Shared Address Space', rfc: 'RFC6598', allocated: '2012-04', reachable: 'false', range: 'shared_cgnat' },
  { blocks: ['127.0.0.0/8'], name: 'Loopback', rfc: 'RFC1122', allocated: '1981-09', reachable: 'false', range: 'loopback' },
  { blocks: ['169.254.0.0/16'], name: 'Link Local', rfc: 'RFC3927', allocated: '2005-05', reachable: 'false', range: 'link_local' },
  { blocks: ['172.16.0.0/12'], name: 'Private-Use', rfc: 'RFC1918', allocated: '1996-02', reachable: 'false', range: 'private' },
  { blocks: ['192.0.0.0/24'], name: 'IETF Protocol Assignments', rfc: 'RFC6890', allocated: '2010-01', reachable: 'false', range: 'ietf_protocol' },
  { blocks: ['192.0.0.0/29'], name: 'IPv4 Service Continuity Prefix', rfc: 'RFC7335', allocated: '2011-06', reachable: 'false', range: 'ietf_protocol' },
  { blocks: ['192.0.0.8/32'], name: 'IPv4 dummy address', rfc: 'RFC7600', allocated: '2015-03', reachable: 'false', range: 'ietf_protocol' },
  { blocks: ['192.0.0.9/32'], name: 'Port Control Protocol Anycast', rfc: 'RFC7723', allocated: '2015-10', reachable: 'true', range: null },
  { blocks: ['192.0.0.10/32'], name: 'Traversal Using Relays around NAT Anycast', rfc: 'RFC8155', allocated: '2017-02', reachable: 'true', range: null },
  { blocks: ['192.0.0.170/32', '192.0.0.171/32'], name: 'NAT64/DNS64 Discovery', rfc: 'RFC8880', allocated: '2013-02', reachable: 'false', range: 'ietf_protocol' },
  { blocks: ['192.0.2.0/24'], name: 'Documentation (TEST-NET-1)', rfc: 'RFC5737', allocated: '2010-01', reachable: 'false', range: 'documentation' },
  { blocks: ['192.31.196.0/24'], name: 'AS112-v4', rfc: 'RFC7535', allocated: '2014-12', reachable: 'true', range: null },
  { blocks: ['192.52.193.0/24'], name: 'AMT', rfc: 'RFC7450', allocated: '2014-12', reachable: 'true', range: null },
  // Terminated (RFC 7526): nothing should answer there any more, and a
  // relay that still does forwards to IPv6 the policy cannot see. Denied.
  { blocks: ['192.88.99.0/24'], name: 'Deprecated (6to4 Relay Anycast)', rfc: 'RFC7526', allocated: '2001-06', terminated: '2015-03', reachable: '', range: 'deprecated' },
  { blocks: ['192.88.99.2/32'], name: '6a44-relay anycast address', rfc: 'RFC6751', allocated: '2012-10', reachable: 'false', range: 'deprecated' },
  { blocks: ['192.168.0.0/16'], name: 'Private-Use', rfc: 'RFC1918', allocated: '1996-02', reachable: 'false', range: 'private' },
  { blocks: ['192.175.48.0/24'], name: 'Direct Delegation AS112 Service', rfc: 'RFC7534', allocated: '1996-01', reachable: 'true', range: null },
  { blocks: ['198.18.0.0/15'], name: 'Benchmarking', rfc: 'RFC2544', allocated: '1999-03', reachable: 'false', range: 'benchmarking' },
  { blocks: ['198.51.100.0/24'], name: 'Documentation (TEST-NET-2)', rfc: 'RFC5737', allocated: '2010-01', reachable: 'false', range: 'documentation' },
  { blocks: ['203.0.113.0/24'], name: 'Documentation (TEST-NET-3)', rfc: 'RFC5737', allocated: '2010-01', reachable: 'false', range: 'documentation' },
  { blocks: ['240.0.0.0/4'], name: 'Reserved', rfc: 'RFC1112', allocated: '1989-08', reachable: 'false', range: 'reserved' },
  { blocks: ['255.255.255.255/32'], name: 'Limited Broadcast', rfc: 'RFC8190', allocated: '1984-10', reachable: 'false', range: 'reserved' },
];

export const IPV6_REGISTRY: readonly RegistryRow[] = [
  { blocks: ['::1/128'], name: 'Loopback Address', rfc: 'RFC4291', allocated: '2006-02', reachable: 'false', range: 'loopback' },
  { blocks: ['::/128'], name: 'Unspecified Address', rfc: 'RFC4291', allocated: '2006-02', reachable: 'false', range: 'unspecified' },
  // Judged as the IPv4 address it maps (classify.ts); this range is the fallback.
  { blocks: ['::ffff:0:0/96'], name: 'IPv4-mapped Address', rfc: 'RFC4291', allocated: '2006-02', reachable: 'false', range: 'reserved' },
  // Globally reachable: judged as the embedded IPv4 address (classify.ts).
  { blocks: ['64:ff9b::/96'], name: 'IPv4-IPv6 Translat.', rfc: 'RFC6052', allocated: '2010-10', reachable: 'true', range: null },
  { blocks: ['64:ff9b:1::/48'], name: 'IPv4-IPv6 Translat.', rfc: 'RFC8215', allocated: '2017-06', reachable: 'false', range: 'nat64_local' },
  { blocks: ['100::/64'], name: 'Discard-Only Address Block', rfc: 'RFC6666', allocated: '2012-06', reachable: 'false', range: 'discard_only' },
  { blocks: ['100:0:0:1::/64'], name: 'Dummy IPv6 Prefix', rfc: 'RFC9780', allocated: '2025-04', reachable: 'false', range: 'dummy' },
  { blocks: ['2001::/23'], name: 'IETF Protocol Assignments', rfc: 'RFC2928', allocated: '2000-09', reachable: 'false', range: 'ietf_protocol' },
  { blocks: ['2001::/32'], name: 'TEREDO', rfc: 'RFC4380', allocated: '2006-01', reachable: 'n/a', range: 'ipv6_teredo' },
  { blocks: ['2001:1::1/128'], name: 'Port Control Protocol Anycast', rfc: 'RFC7723', allocated: '2015-10', reachable: 'true', range: null },
  { blocks: ['2001:1::2/128'], name: 'Traversal Using Relays around NAT Anycast', rfc: 'RFC8155', allocated: '2017-02', reachable: 'true', range: null },
  { blocks: ['2001:1::3/128'], name: 'DNS-SD Service Registration Protocol Anycast', rfc: 'RFC9665', allocated: '2024-04', reachable: 'true', range: null },
  { blocks: ['2001:2::/48'], name: 'Benchmarking', rfc: 'RFC5180', allocated: '2008-04', reachable: 'false', range: 'benchmarking' },
  { blocks: ['2001:3::/32'], name: 'AMT', rfc: 'RFC7450', allocated: '2014-12', reachable: 'true', range: null },
  { blocks: ['2001:4:112::/48'], name: 'AS112-v6', rfc: 'RFC7535', allocated: '2014-12', reachable: 'true', range: null },
  { blocks: ['2001:10::/28'], name: 'Deprecated (previously ORCHID)', rfc: 'RFC4843', allocated: '2007-03', terminated: '2014-03', reachable: '', range: 'deprecated' },
  { blocks: ['2001:20::/28'], name: 'ORCHIDv2', rfc: 'RFC7343', allocated: '2014-07', reachable: 'true', range: null },
  { blocks: ['2001:30::/28'], name: 'Drone Remote ID Protocol Entity Tags (DETs) Prefix', rfc: 'RFC9374', allocated: '2022-12', reachable: 'true', range: null },
  { blocks: ['2001:db8::/32'], name: 'Documentation', rfc: 'RFC3849', allocated: '2004-07', reachable: 'false', range: 'documentation' },
  { blocks: ['2002::/16'], name: '6to4', rfc: 'RFC3056', allocated: '2001-02', reachable: 'n/a', range: 'ipv6_6to4' },
  { blocks: ['2620:4f:8000::/48'], name: 'Direct Delegation AS112 Service', rfc: 'RFC7534', allocated: '2011-05', reachable: 'true', range: null },
  { blocks: ['3fff::/20'], name: 'Documentation', rfc: 'RFC9637', allocated: '2024-07', reachable: 'false', range: 'documentation' },
  { blocks: ['5f00::/16'], name: 'Segment Routing (SRv6) SIDs', rfc: 'RFC9602', allocated: '2024-04', reachable: 'false', range: 'srv6_sid' },
  { blocks: ['fc00::/7'], name: 'Unique-Local', rfc: 'RFC4193', allocated: '2005-10', reachable: 'false', range: 'unique_local' },
  { blocks: ['fe80::/10'], name: 'Link-Local Unicast', rfc: 'RFC4291', allocated: '2006-02', reachable: 'false', range: 'link_local' },
];

/**
 * Denied blocks the special-purpose registries do not list: multicast has
 * registries of its own; the rest are deprecated forms decided here.
 */
export const LOCAL_ROWS: readonly { block: string; range: SpecialRange; why: string }[] = [
  { block: '224.0.0.0/4', range: 'multicast', why: 'IPv4 multicast (RFC 5771): not a unicast destination' },
  { block: 'ff00::/8', range: 'multicast', why: 'IPv6 multicast (RFC 4291)' },
  // Deprecated by RFC 3879 but still routed inside old networks: as private as fc00::/7.
  { block: 'fec0::/10', range: 'site_local', why: 'IPv6 site-local (RFC 3879, deprecated)' },
  // IPv4-compatible addresses (RFC 4291 2.5.5.1, deprecated): no resolver
  // should return one, and some kernels still tunnel them. Denied, named by
  // the embedded IPv4 address's range when it has one (classify.ts).
  { block: '::/96', range: 'deprecated', why: 'IPv4-compatible IPv6 (RFC 4291 2.5.5.1, deprecated)' },
  // Everything outside global unicast 2000::/3 not listed above is
  // "Reserved by IETF" in the IPv6 Address Space registry.
  { block: '::/3', range: 'reserved', why: 'IPv6 outside 2000::/3: reserved by the IETF' },
  { block: '4000::/2', range: 'reserved', why: 'IPv6 outside 2000::/3: reserved by the IETF' },
  { block: '8000::/1', range: 'reserved', why: 'IPv6 outside 2000::/3: reserved by the IETF' },
];
