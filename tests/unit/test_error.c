/*
 * test_error.c — error codes, their texts and names, the thread-local
 * detail, version, and the log hook.
 */
#include <pthread.h>
#include <string.h>

#include "core/internal.h"
#include "testutil.h"

START_TEST(every_code_has_text_and_name)
{
    for (int e = MSGBUS_OK; e <= MSGBUS_ERR_INTERNAL; e++) {
        ck_assert_str_ne(msgbus_strerror((msgbus_err_t)e), "unknown error code");
        ck_assert_int_eq(strncmp(msgbus_err_name((msgbus_err_t)e), "MSGBUS_", 7), 0);
    }
    ck_assert_str_eq(msgbus_strerror(MSGBUS_ERR_TIMEOUT), "timed out");
    ck_assert_str_eq(msgbus_err_name(MSGBUS_ERR_CONFIG), "MSGBUS_ERR_CONFIG");
    ck_assert_str_eq(msgbus_strerror((msgbus_err_t)999), "unknown error code");
    ck_assert_str_eq(msgbus_err_name((msgbus_err_t)-3), "MSGBUS_ERR_UNKNOWN");
}
END_TEST

static void *other_thread(void *arg)
{
    (void)arg;
    mb_error(MSGBUS_ERR_TIMEOUT, "detail from the other thread");
    return (void *)(strcmp(msgbus_last_error(), "detail from the other thread") == 0 ? (void *)1 : NULL);
}

START_TEST(last_error_is_per_thread)
{
    ck_assert_int_eq(mb_error(MSGBUS_ERR_CONFIG, "mine %d", 7), MSGBUS_ERR_CONFIG);
    pthread_t t;
    void *ok;
    pthread_create(&t, NULL, other_thread, NULL);
    pthread_join(t, &ok);
    ck_assert_ptr_nonnull(ok);
    ck_assert_str_eq(msgbus_last_error(), "mine 7");
    mb_error_prefix(MSGBUS_ERR_CONFIG, "context");
    ck_assert_str_eq(msgbus_last_error(), "context: mine 7");
}
END_TEST

START_TEST(version)
{
    ck_assert_str_eq(msgbus_version(), MSGBUS_VERSION_STRING);
    ck_assert_int_eq(MSGBUS_VERSION_NUM, 0x000100);
}
END_TEST

static int lines, last_level;
static char last_line[256];
static void hook(void *opaque, msgbus_log_level_t level, const char *line)
{
    (void)opaque;
    lines++;
    last_level = (int)level;
    strncpy(last_line, line, sizeof last_line - 1);
}

START_TEST(log_hook_and_levels)
{
    msgbus_set_log(hook, NULL, MSGBUS_LOG_WARN);
    mb_log(MSGBUS_LOG_INFO, "filtered");
    ck_assert_int_eq(lines, 0);
    mb_log(MSGBUS_LOG_ERROR, "kept %s", "line");
    ck_assert_int_eq(lines, 1);
    ck_assert_int_eq(last_level, MSGBUS_LOG_ERROR);
    ck_assert_str_eq(last_line, "kept line");
    msgbus_set_log(hook, NULL, MSGBUS_LOG_DEBUG);
    mb_log(MSGBUS_LOG_DEBUG, "debug");
    ck_assert_int_eq(lines, 2);
    msgbus_set_log(NULL, NULL, MSGBUS_LOG_WARN);
    mb_log(MSGBUS_LOG_ERROR, "to stderr");
    ck_assert_int_eq(lines, 2);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("error");
    TCase *tc = tcase_create("error");
    tcase_add_test(tc, every_code_has_text_and_name);
    tcase_add_test(tc, last_error_is_per_thread);
    tcase_add_test(tc, version);
    tcase_add_test(tc, log_hook_and_levels);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
