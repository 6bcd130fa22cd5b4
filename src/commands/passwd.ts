import { parseArgs } from 'node:util';
import { hashPassword } from '../access/password.js';
import { fail, type Command } from './command.js';

const help = `Usage: wa-egress passwd [PASSWORD]

Print the scrypt hash of a proxy user's password, for
clients.users[].password_hash. The password is read from stdin: on a
terminal it is asked for twice, without echo; otherwise the first line of
stdin is the password. As an argument it is visible to other local users
in the process list: prefer stdin.

The hash names its parameters (scrypt:N=…,r=…,p=…:SALT:KEY), so hashes made
with other parameters keep working.

Options:
  -h, --help   show this help
`;

async function run(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { help: { type: 'boolean', short: 'h' } } });
  if (values.help) return void process.stdout.write(help);
  if (positionals.length > 1) fail('expected at most one PASSWORD', help);
  let password: string;
  if (positionals.length === 1) password = positionals[0]!;
  else if (process.stdin.isTTY) {
    password = await ask('Password: ');
    if ((await ask('Again: ')) !== password) fail('the passwords differ');
  } else password = await firstLine();
  if (password.length === 0) fail('the password is empty');
  if (Buffer.byteLength(password) > 255) fail('the password is over 255 bytes (the most SOCKS5 username/password can carry)');
  process.stdout.write(`${await hashPassword(password)}\n`);
}

/** The first line of a piped stdin, without its line ending. */
async function firstLine(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk as Buffer);
    if ((chunk as Buffer).includes(10)) break;
  }
  return Buffer.concat(chunks).toString('utf8').split(/\r?\n/, 1)[0]!;
}

/** Read one line from the terminal in raw mode, echoing nothing. */
function ask(prompt: string): Promise<string> {
  const stdin = process.stdin;
  // Echo off before the prompt: a password typed at once is not echoed either.
  stdin.setRawMode(true);
  stdin.resume();
  process.stderr.write(prompt);
  return new Promise((resolve) => {
    let text = '';
    const done = () => {
      stdin.removeListener('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write('\n');
    };
    const onData = (chunk: Buffer) => {
      for (const ch of chunk.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return void (done(), resolve(text));
        if (ch === '\u0003' || (ch === '\u0004' && text === '')) {
          done();
          process.exit(130);
        }
        if (ch === '\u007f' || ch === '\b') text = [...text].slice(0, -1).join('');
        else if (ch >= ' ') text += ch;
      }
    };
    stdin.on('data', onData);
  });
}

export const passwd: Command = { words: ['passwd'], summary: 'passwd [PASSWORD]         print the scrypt hash of a proxy user\'s password', help, run };
