/*
 * pam_vrf.so's side of the wire, built on its own for tests/test_wire_fuzz.py
 * and for libFuzzer: the reply parser (parse_reply: it runs inside su and
 * sudo, on bytes from root.sock) and the request encoder (encode_request).
 *
 *   fuzz_wire reply    records on stdin (4-byte little-endian length, bytes);
 *                      one line each: "reject", or "accept" with what the
 *                      module takes from the reply (strings in hex)
 *   fuzz_wire request  records in pairs (user, service); one line each:
 *                      "refused", or the request in hex
 *   -DLIBFUZZER        LLVMFuzzerTestOneInput (the parser), for exploration:
 *                      clang -g -O1 -fsanitize=fuzzer,address,undefined -DLIBFUZZER
 *                        tests/fuzz_wire.c -lpam && ./a.out CORPUS_DIR
 *
 * Each input sits in a buffer of exactly its length plus the NUL the module
 * puts after it, so ASan sees any read beyond it.
 */
#include "../pam_module/pam_vrf.c"

static void print_field(const char *name, const char *s)
{
    char safe[PRINTABLE_MAX(MAX_MESSAGE)];
    const char *c;

    printf(" %s=", name);
    if (!s) { putchar('-'); return; }
    for (c = s; *c; c++) printf("%02x", (unsigned char)*c);
    printable(safe, sizeof(safe), s);       /* what the module does with it next */
}

static char *copy(const unsigned char *data, size_t len)
{
    char *buf = malloc(len + 1);

    if (!buf) abort();
    memcpy(buf, data, len);
    buf[len] = '\0';
    return buf;
}

/* Parse data[0..len) as the module would; print the outcome when out is set. */
static void reply(const unsigned char *data, size_t len, int out)
{
    char *buf = copy(data, len);
    struct reply r;

    if (parse_reply(buf, len, &r) < 0) {
        if (out) puts("reject");
    } else if (out) {
        printf("accept v=%ld ok=%d", r.version, r.ok);
        print_field("verdict", r.verdict);
        print_field("vrf", r.vrf);
        print_field("rule", r.rule);
        print_field("error", r.error);
        putchar('\n');
    }
    free(buf);
}

/* Encode a request for user and service (a C string each: up to a NUL). */
static void request(const unsigned char *user, size_t ulen, const unsigned char *service, size_t slen)
{
    char buf[MAX_MESSAGE + 1], *u = copy(user, ulen), *s = copy(service, slen);
    size_t i;

    if (encode_request(buf, sizeof(buf), u, *s ? s : NULL) < 0) puts("refused");
    else {
        for (i = 0; buf[i]; i++) printf("%02x", (unsigned char)buf[i]);
        putchar('\n');
    }
    free(u);
    free(s);
}

#ifdef LIBFUZZER
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t len);
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t len)
{
    if (len <= MAX_MESSAGE) reply(data, len, 0);
    return 0;
}
#else
static int record(unsigned char *data, size_t size, size_t *len)
{
    unsigned char head[4];

    if (fread(head, 1, 4, stdin) != 4) return 0;
    *len = head[0] | head[1] << 8 | head[2] << 16 | (size_t)head[3] << 24;
    if (*len > size || fread(data, 1, *len, stdin) != *len) exit(2);
    return 1;
}

int main(int argc, char **argv)
{
    static unsigned char a[2 * MAX_MESSAGE], b[2 * MAX_MESSAGE];
    size_t alen, blen;
    int encode = argc == 2 && !strcmp(argv[1], "request");

    if (argc != 2 || (!encode && strcmp(argv[1], "reply"))) return 2;
    while (record(a, encode ? sizeof(a) : MAX_MESSAGE, &alen)) {
        if (!encode) reply(a, alen, 1);
        else if (record(b, sizeof(b), &blen)) request(a, alen, b, blen);
        else return 2;
    }
    return ferror(stdin) ? 2 : 0;
}
#endif
