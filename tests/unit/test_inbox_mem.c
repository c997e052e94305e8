/*
 * test_inbox_mem.c — promises of the bounded in-memory inbox store: claim
 * and duplicate, forgetting (its stand-in for a rollback), eviction by
 * capacity and by time-to-live, purge, use from several threads, bad
 * arguments; and msgbus_inbox_handle on it over a mem:// bus.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/msg.h"
#include "msgbus/inbox.h"
#include "testutil.h"

START_TEST(first_claim_ok_then_duplicate)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_memory(&ib, "billing", 100, 0));
    ck_assert_str_eq(msgbus_inbox_store(ib), "memory");
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    tu_ck_ok(msgbus_inbox_claim(ib, m)); /* no transaction needed */
    tu_ck_err(msgbus_inbox_claim(ib, m), MSGBUS_ERR_DUPLICATE);
    tu_ck_err(msgbus_inbox_claim_id(ib, msgbus_msg_id(m)), MSGBUS_ERR_DUPLICATE);
    tu_ck_ok(msgbus_inbox_claim_id(ib, "other"));
    msgbus_msg_free(m);
    msgbus_inbox_close(ib);
}
END_TEST

/* The memory store has no transaction: forgetting is how a failed
 * processing gives the redelivery a chance. */
START_TEST(forget_is_its_rollback)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_memory(&ib, "billing", 100, 0));
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    tu_ck_ok(msgbus_inbox_claim(ib, m));
    tu_ck_ok(msgbus_inbox_forget(ib, m));
    tu_ck_err(msgbus_inbox_forget(ib, m), MSGBUS_ERR_NOT_FOUND);
    tu_ck_ok(msgbus_inbox_claim(ib, m));
    msgbus_msg_free(m);
    msgbus_inbox_close(ib);
}
END_TEST

START_TEST(capacity_evicts_the_oldest)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_memory(&ib, "billing", 1000, 0));
    char id[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(id, sizeof id, "id-%d", i);
        tu_ck_ok(msgbus_inbox_claim_id(ib, id));
    }
    /* Full: every one of the 1000 is still remembered. */
    int dups = 0;
    for (int i = 0; i < 1000; i++) {
        snprintf(id, sizeof id, "id-%d", i);
        dups += msgbus_inbox_claim_id(ib, id) == MSGBUS_ERR_DUPLICATE;
    }
    ck_assert_int_eq(dups, 1000);
    /* 10 more push out the 10 oldest, and only those. */
    for (int i = 1000; i < 1010; i++) {
        snprintf(id, sizeof id, "id-%d", i);
        tu_ck_ok(msgbus_inbox_claim_id(ib, id));
    }
    int forgotten = 0;
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "id-%d", i);
        forgotten += msgbus_inbox_claim_id(ib, id) == MSGBUS_OK; /* re-claims evict 10..19 */
    }
    ck_assert_int_eq(forgotten, 10);
    dups = 0;
    for (int i = 20; i < 1010; i++) {
        snprintf(id, sizeof id, "id-%d", i);
        dups += msgbus_inbox_claim_id(ib, id) == MSGBUS_ERR_DUPLICATE;
    }
    printf("capacity_evicts_the_oldest: forgotten=%d still_known=%d\n", forgotten, dups);
    ck_assert_int_eq(dups, 990);
    msgbus_inbox_close(ib);
}
END_TEST

START_TEST(capacity_one)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_memory(&ib, "billing", 1, 0));
    tu_ck_ok(msgbus_inbox_claim_id(ib, "a"));
    tu_ck_err(msgbus_inbox_claim_id(ib, "a"), MSGBUS_ERR_DUPLICATE);
    tu_ck_ok(msgbus_inbox_claim_id(ib, "b"));
    tu_ck_ok(msgbus_inbox_claim_id(ib, "a"));
    msgbus_inbox_close(ib);
}
END_TEST

START_TEST(ttl_expires_claims)
{
    msgbus_inbox_t *ib = NULL;
    /* Wide margins: a loaded machine (valgrind, parallel ctest) oversleeps. */
    tu_ck_ok(msgbus_inbox_open_memory(&ib, "billing", 100, 1000));
    tu_ck_ok(msgbus_inbox_claim_id(ib, "early"));
    usleep(400 * 1000);
    tu_ck_ok(msgbus_inbox_claim_id(ib, "late"));
    tu_ck_err(msgbus_inbox_claim_id(ib, "early"), MSGBUS_ERR_DUPLICATE); /* ~400 ms < 1000 ms */
    usleep(700 * 1000);
    /* early is >= 1100 ms old: expired; late is ~700 ms: kept. */
    tu_ck_ok(msgbus_inbox_claim_id(ib, "early"));
    tu_ck_err(msgbus_inbox_claim_id(ib, "late"), MSGBUS_ERR_DUPLICATE);
    msgbus_inbox_close(ib);
}
END_TEST

START_TEST(purge_removes_old_claims_only)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_memory(&ib, "billing", 100, 0));
    tu_ck_ok(msgbus_inbox_claim_id(ib, "old-1"));
    tu_ck_ok(msgbus_inbox_claim_id(ib, "old-2"));
    usleep(600 * 1000);
    tu_ck_ok(msgbus_inbox_claim_id(ib, "new-1"));
    size_t n = 99;
    tu_ck_ok(msgbus_inbox_purge(ib, 300, &n));
    ck_assert_uint_eq(n, 2);
    tu_ck_ok(msgbus_inbox_claim_id(ib, "old-1"));
    tu_ck_err(msgbus_inbox_claim_id(ib, "new-1"), MSGBUS_ERR_DUPLICATE);
    tu_ck_ok(msgbus_inbox_purge(ib, 0, &n));
    ck_assert_uint_eq(n, 2);
    tu_ck_err(msgbus_inbox_purge(ib, -5, &n), MSGBUS_ERR_INVALID);
    msgbus_inbox_close(ib);
}
END_TEST

/* Many ids, spread over the hash table's growth: no false duplicates and
 * no misses. */
START_TEST(many_ids_across_growth)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_memory(&ib, "billing", 50000, 0));
    int ok = 0, dup = 0;
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 20000; i++) {
            msgbus_msg_t *m = NULL;
            char id[40];
            snprintf(id, sizeof id, "0190c3a1-0000-7000-8000-%012d", i); /* UUIDv7-like shared prefix */
            msgbus_err_t e = msgbus_inbox_claim_id(ib, id);
            ok += e == MSGBUS_OK;
            dup += e == MSGBUS_ERR_DUPLICATE;
            (void)m;
        }
    ck_assert_int_eq(ok, 20000);
    ck_assert_int_eq(dup, 20000);
    msgbus_inbox_close(ib);
}
END_TEST

struct race {
    msgbus_inbox_t *ib;
    int won;
};

static void *race_thread(void *arg)
{
    struct race *r = arg;
    char id[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof id, "race-%d", i);
        if (msgbus_inbox_claim_id(r->ib, id) == MSGBUS_OK)
            r->won++;
    }
    return NULL;
}

START_TEST(threads_claim_each_id_once)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_memory(&ib, "billing", 10000, 0));
    struct race r[4] = {{ib, 0}, {ib, 0}, {ib, 0}, {ib, 0}};
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, race_thread, &r[i]), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    int won = r[0].won + r[1].won + r[2].won + r[3].won;
    printf("threads_claim_each_id_once: won=%d of 5000 ids x 4 threads\n", won);
    ck_assert_int_eq(won, 5000);
    msgbus_inbox_close(ib);
}
END_TEST

START_TEST(bad_arguments_get_clear_errors)
{
    msgbus_inbox_t *ib = NULL;
    tu_ck_err(msgbus_inbox_open_memory(&ib, "billing", 0, 0), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "capacity"));
    tu_ck_err(msgbus_inbox_open_memory(&ib, "billing", 10, -1), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "ttl"));
    tu_ck_err(msgbus_inbox_open_memory(&ib, NULL, 10, 0), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_open_memory(&ib, "a/b", 10, 0), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_open_memory(NULL, "billing", 10, 0), MSGBUS_ERR_INVALID);
    ck_assert_ptr_null(ib);
    tu_ck_ok(msgbus_inbox_open_memory(&ib, "billing", 10, 0));
    msgbus_msg_t *noid = mb_msg_alloc();
    tu_ck_err(msgbus_inbox_claim(ib, noid), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "no id"));
    tu_ck_err(msgbus_inbox_claim(ib, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_claim_id(ib, "bad id"), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_inbox_handle(ib, noid, NULL, NULL, NULL), MSGBUS_ERR_INVALID);
    msgbus_msg_free(noid);
    msgbus_inbox_close(ib);
}
END_TEST

/* ---- msgbus_inbox_handle on the memory store, over a mem:// bus ---- */

struct calls {
    int n;
    int fail_first; /* fail this many calls */
};

static int handler(void *opaque, msgbus_msg_t *msg)
{
    struct calls *c = opaque;
    c->n++;
    return c->n <= c->fail_first ? -1 : 0;
}

START_TEST(handle_paths_on_memory_store)
{
    char url[96], topic[64];
    tu_unique(url, sizeof url, "mem://inbox-mem");
    tu_unique(topic, sizeof topic, "orders");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, "billing", &sub));
    msgbus_inbox_t *ib = NULL;
    tu_ck_ok(msgbus_inbox_open_memory(&ib, "billing", 100, 0));

    msgbus_msg_t *out = NULL;
    tu_ck_ok(msgbus_msg_new(&out, "order-1", 7));
    tu_ck_ok(msgbus_publish(bus, topic, out, NULL, NULL));
    tu_ck_ok(msgbus_publish(bus, topic, out, NULL, NULL)); /* same id: a duplicate delivery */
    tu_ck_ok(msgbus_flush(bus, 5000, NULL));

    struct calls c = {0, 1};
    msgbus_inbox_outcome_t oc;
    /* 1: handler fails → forgotten and nacked. */
    msgbus_msg_t *in = tu_receive(sub, 5000);
    ck_assert_ptr_nonnull(in);
    tu_ck_ok(msgbus_inbox_handle(ib, in, handler, &c, &oc));
    ck_assert_int_eq(oc, MSGBUS_INBOX_REJECTED);
    tu_ck_err(msgbus_ack(in), MSGBUS_ERR_STATE); /* already settled (nacked) */
    msgbus_msg_free(in);
    /* 2, 3: the redelivery and the duplicate publish, in either order. */
    int applied = 0, duplicate = 0;
    for (int i = 0; i < 2; i++) {
        in = tu_receive(sub, 5000);
        ck_assert_ptr_nonnull(in);
        ck_assert_str_eq(msgbus_msg_id(in), msgbus_msg_id(out));
        tu_ck_ok(msgbus_inbox_handle(ib, in, handler, &c, &oc));
        applied += oc == MSGBUS_INBOX_APPLIED;
        duplicate += oc == MSGBUS_INBOX_DUPLICATE;
        tu_ck_err(msgbus_ack(in), MSGBUS_ERR_STATE); /* acked by the helper */
        msgbus_msg_free(in);
    }
    printf("handle_paths_on_memory_store: handler_calls=%d applied=%d duplicate=%d\n", c.n, applied,
           duplicate);
    ck_assert_int_eq(applied, 1);
    ck_assert_int_eq(duplicate, 1);
    ck_assert_int_eq(c.n, 2); /* failed once, applied once, never for the duplicate */
    ck_assert_ptr_null(tu_receive(sub, 200)); /* nothing left: all settled */

    msgbus_msg_free(out);
    msgbus_inbox_close(ib);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("inbox_mem");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, first_claim_ok_then_duplicate);
    tcase_add_test(tc, forget_is_its_rollback);
    tcase_add_test(tc, capacity_evicts_the_oldest);
    tcase_add_test(tc, capacity_one);
    tcase_add_test(tc, ttl_expires_claims);
    tcase_add_test(tc, purge_removes_old_claims_only);
    tcase_add_test(tc, many_ids_across_growth);
    tcase_add_test(tc, threads_claim_each_id_once);
    tcase_add_test(tc, bad_arguments_get_clear_errors);
    tcase_add_test(tc, handle_paths_on_memory_store);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run_suite(suite());
}
