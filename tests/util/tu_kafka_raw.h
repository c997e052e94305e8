/*
 * tu_kafka_raw.h — a plain librdkafka consumer's view of records, for
 * tests that check what msgbus writes on the Kafka wire (header names and
 * values, key, value, timestamp) with no msgbus code in the way. Included
 * by Kafka tests only (testutil itself does not need librdkafka).
 */
#ifndef TU_KAFKA_RAW_H
#define TU_KAFKA_RAW_H

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#define TU_RAW_HDRS 16
/* One record: NUL-terminated copies; key NULL when none. */
struct tu_raw_rec {
    char *value, *key;
    size_t len;
    int64_t ts;
    int nh;
    char *hn[TU_RAW_HDRS], *hv[TU_RAW_HDRS];
};

static inline void tu_raw_free(struct tu_raw_rec *r, int n)
{
    for (int i = 0; i < n; i++) {
        free(r[i].value);
        free(r[i].key);
        for (int k = 0; k < r[i].nh; k++) {
            free(r[i].hn[k]);
            free(r[i].hv[k]);
        }
    }
}

static inline const char *tu_raw_header(const struct tu_raw_rec *r, const char *name)
{
    for (int k = 0; k < r->nh; k++)
        if (strcmp(r->hn[k], name) == 0)
            return r->hv[k];
    return NULL;
}

/* The header names of r in wire order, joined by ','. */
static inline const char *tu_raw_names(const struct tu_raw_rec *r)
{
    static char out[1024];
    out[0] = '\0';
    for (int k = 0; k < r->nh; k++)
        snprintf(out + strlen(out), sizeof out - strlen(out), "%s%s", k ? "," : "", r->hn[k]);
    return out;
}

/* Reads `n` records of partition 0 of `topic` from offset `from`
 * (RD_KAFKA_OFFSET_BEGINNING allowed) through `bootstrap`, waiting up to
 * tries × 100 ms; fails the test when fewer came. */
static inline void tu_raw_read(const char *bootstrap, const char *topic, int64_t from, int n,
                               int tries, struct tu_raw_rec *out)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr, sizeof errstr);
    rd_kafka_conf_set(conf, "group.id", "tu-raw-reader", errstr, sizeof errstr);
    rd_kafka_conf_set(conf, "fetch.wait.max.ms", "10", errstr, sizeof errstr);
    rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    ck_assert_msg(rk != NULL, "rd_kafka_new: %s", errstr);
    rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(tl, topic, 0)->offset = from;
    ck_assert_int_eq(rd_kafka_assign(rk, tl), 0);
    rd_kafka_topic_partition_list_destroy(tl);
    int got = 0;
    for (int t = 0; got < n && t < tries; t++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m)
            continue;
        if (!m->err) {
            struct tu_raw_rec *r = &out[got++];
            memset(r, 0, sizeof *r);
            r->value = strndup(m->payload ? m->payload : "", m->len);
            r->len = m->len;
            if (m->key)
                r->key = strndup(m->key, m->key_len);
            r->ts = rd_kafka_message_timestamp(m, NULL);
            rd_kafka_headers_t *h = NULL;
            const char *name;
            const void *v;
            size_t vn;
            if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR)
                for (size_t i = 0;
                     r->nh < TU_RAW_HDRS && !rd_kafka_header_get_all(h, i, &name, &v, &vn); i++) {
                    r->hn[r->nh] = strdup(name);
                    r->hv[r->nh++] = strndup(v ? v : "", vn);
                }
        }
        rd_kafka_message_destroy(m);
    }
    ck_assert_msg(got == n, "read %d of %d records of %s", got, n, topic);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
}

#endif
