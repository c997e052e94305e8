/* An in-memory inbox for a service without a database: the second claim
 * of an id within the window is a duplicate. */
#include <stdio.h>
#include <msgbus/inbox.h>
#include <msgbus/msgbus.h>

int main(void)
{
    msgbus_inbox_t *ib;
    /* at most 100000 ids, each remembered for 10 minutes */
    if (msgbus_inbox_open_memory(&ib, "billing", 100000, 10 * 60 * 1000) != MSGBUS_OK)
        return 1;
    msgbus_err_t first = msgbus_inbox_claim_id(ib, "order-42");
    msgbus_err_t second = msgbus_inbox_claim_id(ib, "order-42");
    printf("first: %s, second: %s\n", msgbus_err_name(first), msgbus_err_name(second));
    msgbus_inbox_close(ib);
    return first == MSGBUS_OK && second == MSGBUS_ERR_DUPLICATE ? 0 : 1;
}
