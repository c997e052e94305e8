/* Open a bus on $MSGBUS_URL (the in-process broker when it is unset),
 * say which backend it is, close it. */
#include <stdio.h>
#include <stdlib.h>
#include <msgbus/msgbus.h>

int main(void)
{
    const char *url = getenv("MSGBUS_URL");
    msgbus_t *bus;
    msgbus_err_t e = msgbus_open(&bus, url && *url ? url : "mem://example", NULL);
    if (e != MSGBUS_OK) {
        /* e.g. "open: bad configuration: unknown option 'prefech' ..." */
        fprintf(stderr, "open: %s: %s\n", msgbus_strerror(e), msgbus_last_error());
        return 1;
    }
    printf("connected to %s (%s)\n", msgbus_url(bus), msgbus_backend(bus));
    msgbus_close(bus);
    return 0;
}
