/* Strict UTF-8 validation (RFC 3629), as protobuf runtimes apply it to `string` fields: no overlong forms, no
 * UTF-16 surrogates (U+D800-U+DFFF), nothing above U+10FFFF, no truncated sequence. Reads exactly n bytes. */
#ifndef KM_UTF8_H
#define KM_UTF8_H

#include <stddef.h>

static inline int km_utf8_valid(const unsigned char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned char lo = 0x80, hi = 0xBF;     /* the allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;           /* overlong below U+0800 */
            if (c == 0xED) hi = 0x9F;           /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;           /* overlong below U+10000 */
            if (c == 0xF4) hi = 0x8F;           /* above U+10FFFF */
        } else {
            return 0;                           /* a continuation byte first, C0/C1 (overlong), F5-FF */
        }
        if (n - i <= need)
            return 0;                           /* truncated */
        if (p[i + 1] < lo || p[i + 1] > hi)
            return 0;
        for (size_t k = 2; k <= need; k++)
            if ((p[i + k] & 0xC0) != 0x80)
                return 0;
        i += need + 1;
    }
    return 1;
}

#endif
