/* Print a URL the way msgbus prints it: secrets as "***". The length
 * first, like snprintf, then the text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <msgbus/msgbus.h>

int main(void)
{
    const char *url = "amqps://app:s3cret@mq.example:5671/shop?ssl.key.password=k3y&prefetch=50";
    size_t n = msgbus_redact(url, NULL, 0);
    char *shown = malloc(n + 1);
    if (!shown)
        return 1;
    msgbus_redact(url, shown, n + 1);
    printf("%s\n", shown); /* amqps://app:***@mq.example:5671/shop?ssl.key.password=***&prefetch=50 */
    int ok = strstr(shown, "s3cret") == NULL && strstr(shown, "k3y") == NULL;
    free(shown);
    return ok ? 0 : 1;
}
